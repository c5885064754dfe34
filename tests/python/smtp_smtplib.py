#!/usr/bin/env python3
"""Drives a running mailkeep with Python's smtplib (a client nobody here wrote).

Usage: smtp_smtplib.py HOST PORT
Prints one line per check and exits non-zero on the first failure.
"""
import smtplib
import ssl
import sys
from email.message import EmailMessage

host, port = sys.argv[1], int(sys.argv[2])


def check(name, cond, detail=""):
    if not cond:
        print(f"FAIL {name}: {detail}")
        sys.exit(1)
    print(f"ok {name}")


ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE

with smtplib.SMTP(host, port, timeout=30) as s:
    code, _ = s.ehlo("python.client.example")
    check("ehlo", code == 250)
    for ext in ["pipelining", "8bitmime", "smtputf8", "size", "enhancedstatuscodes", "chunking", "dsn", "starttls"]:
        check(f"advertises {ext}", s.has_extn(ext), s.esmtp_features)
    s.starttls(context=ctx)
    s.ehlo("python.client.example")
    check("no STARTTLS after TLS", not s.has_extn("starttls"))
    msg = EmailMessage()
    msg["From"] = "Python Sender <py@remote.test>"
    msg["To"] = "alice@example.test"
    msg["Subject"] = "from smtplib"
    msg["Message-ID"] = "<smtplib-1@remote.test>"
    msg.set_content("Hello from smtplib.\n.leading dot line\n")
    refused = s.send_message(msg, rcpt_options=["NOTIFY=SUCCESS,FAILURE"], mail_options=["RET=HDRS", "ENVID=py-envid-1"])
    check("send_message over STARTTLS", refused == {}, refused)
    # Several recipients, one unknown: the others still get it.
    try:
        refused = s.sendmail("py@remote.test", ["alice@example.test", "nobody@example.test", "bob+tag@example.test"],
                             b"Subject: multi\r\nMessage-ID: <smtplib-2@remote.test>\r\n\r\nmulti\r\n")
        check("partial refusal reported", list(refused.keys()) == ["nobody@example.test"], refused)
        check("unknown user is 550 5.1.1", refused["nobody@example.test"][0] == 550, refused)
    except smtplib.SMTPRecipientsRefused as e:
        check("partial refusal", False, e)
    # SMTPUTF8: internationalized sender and recipient domain.
    refused = s.sendmail("jürgen@bücher.test", ["alice@example.test"],
                         "Subject: utf8\r\nMessage-ID: <smtplib-3@remote.test>\r\n\r\nGrüße\r\n".encode(),
                         mail_options=["SMTPUTF8", "BODY=8BITMIME"])
    check("SMTPUTF8 message", refused == {}, refused)
    # Relay attempt.
    try:
        s.sendmail("py@remote.test", ["someone@elsewhere.test"], b"Subject: relay\r\n\r\nx\r\n")
        check("relay refused", False, "accepted")
    except smtplib.SMTPRecipientsRefused as e:
        code = e.recipients["someone@elsewhere.test"][0]
        check("relay refused with 554", code == 554, e.recipients)
    s.rset()
    code, text = s.verify("alice")
    check("VRFY is 252", code == 252, text)

# Without TLS, and the null sender (bounces must be accepted, RFC 5321 4.5.5).
with smtplib.SMTP(host, port, timeout=30) as s:
    refused = s.sendmail("", ["bob@example.test"], b"Subject: bounce\r\nMessage-ID: <smtplib-4@remote.test>\r\n\r\nbounce\r\n")
    check("null sender", refused == {}, refused)
    code, _ = s.docmd("RCPT TO:<postmaster>")
    check("RCPT before MAIL is 503", code == 503)
print("all smtplib checks passed")
