#!/usr/bin/env python3
"""Message submission (RFC 6409) with Python's smtplib: STARTTLS on the submission port and
implicit TLS on the submissions port, AUTH PLAIN and LOGIN, the sender checks.

Usage: submission_smtplib.py HOST SUBMISSION_PORT SUBMISSIONS_PORT USER PASSWORD TO
Prints one line per check and exits non-zero on the first failure.
"""
import smtplib
import ssl
import sys

host, port, port_tls, user, password, to = sys.argv[1:7]
port, port_tls = int(port), int(port_tls)


def check(name, cond, detail=""):
    if not cond:
        print(f"FAIL {name}: {detail}")
        sys.exit(1)
    print(f"ok {name}")


ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE

# No Date and no Message-ID: the submission server adds them (RFC 6409 8.2, 8.3).
BARE = f"From: {user}\r\nTo: {to}\r\nSubject: submitted by smtplib\r\n\r\nhello from smtplib\r\n"

with smtplib.SMTP(host, port, timeout=30) as s:
    s.ehlo("python.client.example")
    check("advertises starttls", s.has_extn("starttls"), s.esmtp_features)
    s.starttls(context=ctx)
    s.ehlo("python.client.example")
    check("advertises AUTH PLAIN LOGIN after TLS", "PLAIN" in s.esmtp_features.get("auth", "").upper()
          and "LOGIN" in s.esmtp_features.get("auth", "").upper(), s.esmtp_features)
    try:
        s.login(user, "wrong password")
        check("wrong password refused", False)
    except smtplib.SMTPAuthenticationError as e:
        check("wrong password refused with 535", e.smtp_code == 535, e)
    s.login(user, password)  # PLAIN, smtplib's choice among those advertised
    check("PLAIN login", True)
    code, msg = s.mail("someone.else@example.test")
    check("foreign MAIL FROM refused with 553", code == 553 and b"5.7.1" in msg, (code, msg))
    s.rset()
    refused = s.sendmail(user, [to], BARE)
    check("message submitted", refused == {}, refused)
    try:
        s.sendmail(user, [to], BARE.replace(f"From: {user}", "From: boss@example.test"))
        check("forged From: refused", False)
    except smtplib.SMTPDataError as e:
        check("forged From: refused with 553 5.7.1", e.smtp_code == 553 and b"5.7.1" in e.smtp_error, e)

with smtplib.SMTP_SSL(host, port_tls, context=ctx, timeout=30) as s:
    s.ehlo("python.client.example")
    check("implicit TLS advertises AUTH", "auth" in s.esmtp_features, s.esmtp_features)
    check("no STARTTLS inside TLS", not s.has_extn("starttls"), s.esmtp_features)
    # Force LOGIN (smtplib would pick PLAIN).
    s.user, s.password = user, password
    code, _ = s.auth("LOGIN", s.auth_login, initial_response_ok=False)
    check("LOGIN login", code == 235, code)
    refused = s.sendmail(user, [to], BARE.replace("submitted by smtplib", "submitted over implicit TLS")
                         .replace("\r\n\r\n", "\r\nDate: Mon, 02 Jan 2023 03:04:05 +0000\r\n"
                                  "Message-ID: <kept@python.client.example>\r\n\r\n", 1))
    check("message submitted over implicit TLS", refused == {}, refused)

print("all submission checks passed")
