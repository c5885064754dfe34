#!/usr/bin/env python3
"""Drives mailkeep's IMAP server with Python's imaplib (a client nobody here wrote).

usage: imap_imaplib.py HOST IMAP_PORT IMAPS_PORT SMTP_PORT USER PASSWORD
Each check asserts what the RFCs require; the first failure exits non-zero.
"""
import email
import imaplib
import re
import smtplib
import ssl
import sys

host, port, tls_port, smtp_port, user, password = sys.argv[1:7]
port, tls_port, smtp_port = int(port), int(tls_port), int(smtp_port)


def ok(res, what):
    typ, data = res
    assert typ == "OK", f"{what}: {typ} {data}"
    return data


def send(subject, body, extra=""):
    with smtplib.SMTP(host, smtp_port) as s:
        s.sendmail(
            "sender@example.org",
            [user],
            f"From: Sender <sender@example.org>\r\nTo: {user}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{abs(hash(subject))}@example.org>\r\n{extra}\r\n{body}\r\n".encode(),
        )


ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE

# STARTTLS, then AUTHENTICATE PLAIN (imaplib uses it for login with AUTH=PLAIN? no: LOGIN).
m = imaplib.IMAP4(host, port)
assert "STARTTLS" in m.capabilities, m.capabilities
ok(m.starttls(ssl_context=ctx), "STARTTLS")
assert "STARTTLS" not in m.capabilities, "STARTTLS is not offered twice"
ok(m.authenticate("PLAIN", lambda _: f"\0{user}\0{password}".encode()), "AUTHENTICATE PLAIN")
assert m.logout()[0] == "BYE"

# Implicit TLS on the imaps port, wrong password first.
m = imaplib.IMAP4_SSL(host, tls_port, ssl_context=ctx)
try:
    m.login(user, "wrong password")
    raise AssertionError("a wrong password logged in")
except imaplib.IMAP4.error as e:
    assert "AUTHENTICATIONFAILED" in str(e), e
ok(m.login(user, password), "LOGIN over TLS")

send("first message", "hello imaplib")
send("second message", "Grüße", "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n")
send("Re: first message", "a reply", "In-Reply-To: <%d@example.org>\r\n" % abs(hash("first message")))

data = ok(m.list('""', "*"), "LIST")
names = [re.search(rb'"/" (.*)$', d).group(1).strip(b'"') for d in data]
for want in [b"INBOX", b"Sent", b"Drafts", b"Junk", b"Trash", b"Archive"]:
    assert want in names, (want, data)
assert any(b"\\Sent" in d for d in data), "SPECIAL-USE attributes in LIST"

data = ok(m.select("INBOX"), "SELECT")
assert data == [b"3"], data
assert m.untagged_responses.get("UIDVALIDITY"), "UIDVALIDITY reported"

# FETCH of metadata, envelope and structure.
data = ok(m.fetch("1:*", "(FLAGS UID RFC822.SIZE INTERNALDATE ENVELOPE BODYSTRUCTURE)"), "FETCH")
assert len(data) == 3, data
assert b'"first message"' in data[0] and b"UID 1" in data[0], data[0]
assert b'"TEXT" "PLAIN"' in data[1], data[1]

# BODY.PEEK leaves \Seen alone; BODY[] sets it.
data = ok(m.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])"), "FETCH PEEK")
assert data[0][1].startswith(b"Subject: first message"), data
data = ok(m.fetch("1", "(FLAGS)"), "FLAGS")
assert b"\\Seen" not in data[0], data
data = ok(m.fetch("1", "(RFC822)"), "FETCH RFC822")
msg = email.message_from_bytes(data[0][1])
assert msg["Subject"] == "first message"
assert msg.get_payload().strip() == "hello imaplib", msg.get_payload()
data = ok(m.fetch("1", "(FLAGS)"), "FLAGS after fetch")
assert b"\\Seen" in data[0], data
data = ok(m.fetch("1", "(BODY.PEEK[TEXT]<0.5>)"), "partial")
# A short part may come as a quoted string rather than a literal; both are valid.
assert data[0] == b'1 (BODY[TEXT]<0> "hello")' or data[0][1] == b"hello", data

# SEARCH: flags, headers, decoded body text, UID.
assert ok(m.search(None, "UNSEEN"), "SEARCH UNSEEN") == [b"2 3"]
assert ok(m.search(None, "SUBJECT", '"first"'), "SEARCH SUBJECT") == [b"1 3"]
m.literal = "Grüße".encode()  # imaplib sends it as a literal
assert ok(m.search("UTF-8", "BODY"), "SEARCH BODY utf-8") == [b"2"]
assert ok(m.uid("SEARCH", None, "ALL"), "UID SEARCH") == [b"1 2 3"]
assert ok(m.search(None, "NOT", "FROM", "nobody"), "SEARCH NOT") == [b"1 2 3"]

# SORT and THREAD.
# Base subjects (RFC 5256 2.1): "Re: first message" sorts with "first message"; ties keep
# mailbox order.
assert ok(m.sort("(REVERSE SUBJECT)", "UTF-8", "ALL"), "SORT") == [b"2 1 3"]
assert ok(m.thread("REFERENCES", "UTF-8", "ALL"), "THREAD") == [b"(1 3)(2)"], m.thread("REFERENCES", "UTF-8", "ALL")

# STORE with and without .SILENT.
data = ok(m.store("2", "+FLAGS", "(\\Flagged $Important)"), "STORE")
assert b"\\Flagged" in data[0] and b"$Important" in data[0], data
ok(m.store("2", "-FLAGS.SILENT", "($Important)"), "STORE.SILENT")
data = ok(m.fetch("2", "(FLAGS)"), "FLAGS")
assert b"$Important" not in data[0] and b"\\Flagged" in data[0], data

# APPEND with flags and a date; APPENDUID.
typ, data = m.append("Drafts", "(\\Draft)", imaplib.Time2Internaldate(1700000000), b"Subject: draft\r\n\r\nunfinished\r\n")
assert typ == "OK" and b"APPENDUID" in data[0], data
data = ok(m.status("Drafts", "(MESSAGES UNSEEN SIZE UIDNEXT)"), "STATUS")
assert b"MESSAGES 1" in data[0] and b"SIZE 30" in data[0], data
# imaplib returns NO (it raises only on BAD).
typ, data = m.append("Nowhere", None, None, b"Subject: x\r\n\r\ny\r\n")
assert typ == "NO" and b"TRYCREATE" in data[0], data

# COPY (COPYUID) and MOVE.
typ, data = m.copy("1", "Archive")
assert typ == "OK" and b"COPYUID" in data[0], data
typ, data = m.uid("MOVE", "3", "Trash")
assert typ == "OK", data
# RFC 6851: MOVE reports the removal as EXPUNGE.
assert m.untagged_responses.pop("EXPUNGE", None) == [b"3"], m.untagged_responses
data = ok(m.search(None, "ALL"), "after MOVE")
assert data == [b"1 2"], data

# EXPUNGE.
ok(m.store("1", "+FLAGS", "(\\Deleted)"), "STORE \\Deleted")
data = ok(m.expunge(), "EXPUNGE")
assert data == [b"1"], data
assert ok(m.search(None, "ALL"), "after EXPUNGE") == [b"1"]

# Hierarchies: CREATE, LIST with %, RENAME, DELETE, subscriptions.
ok(m.create("Projects/2026/Q4"), "CREATE")
data = ok(m.list('""', "Projects/%"), "LIST %")
assert len(data) == 1 and b"Projects/2026" in data[0] and b"\\HasChildren" in data[0], data
ok(m.rename("Projects", "Work"), "RENAME")
data = ok(m.list('""', "Work/*"), "LIST after RENAME")
assert len(data) == 2, data
ok(m.subscribe("Work/2026"), "SUBSCRIBE")
data = ok(m.lsub('""', "Work/*"), "LSUB")
assert data == [b'() "/" Work/2026'], data
ok(m.delete("Work/2026/Q4"), "DELETE")
assert m.delete("INBOX")[0] == "NO", "INBOX cannot be deleted"

# Non-ASCII mailbox names in modified UTF-7 (IMAP4rev1).
ok(m.create("&ZeVnLIqe-"), "CREATE mUTF-7")
data = ok(m.list('""', "&ZeVnLIqe-"), "LIST mUTF-7")
assert b"&ZeVnLIqe-" in data[0], data

# Quota, namespace, ID, capability, noop.
typ, data = m.getquotaroot("INBOX")
assert typ == "OK", data
typ, data = m.namespace()
assert typ == "OK" and data == [b'(("" "/")) (("Shared/" "/")) NIL'], data
ok(m.noop(), "NOOP")

# Bad input gets BAD and the session goes on.
imaplib.Commands["FROBNICATE"] = ("AUTH", "SELECTED")
try:
    m._simple_command("FROBNICATE")
    raise AssertionError("unknown command accepted")
except imaplib.IMAP4.error as e:
    assert "BAD" in str(e) or "FROBNICATE" in str(e), e
ok(m.noop(), "NOOP after BAD")

# ENABLE IMAP4rev2 switches to ESEARCH and UTF-8 names.
ok(m.close(), "CLOSE")
typ, data = m._simple_command("ENABLE", "IMAP4rev2")
assert typ == "OK", data
ok(m.select("INBOX"), "SELECT rev2")
typ, data = m._simple_command("SEARCH", "ALL")
assert typ == "OK", data
assert m.untagged_responses.get("ESEARCH"), m.untagged_responses
ok(m.close(), "CLOSE")
assert m.logout()[0] == "BYE"
print("imaplib: all checks passed")
