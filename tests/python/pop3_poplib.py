#!/usr/bin/env python3
"""Drives mailkeep's POP3 server with Python's poplib (a client nobody here wrote).

usage: pop3_poplib.py HOST POP3_PORT POP3S_PORT SMTP_PORT USER PASSWORD
"""
import poplib
import smtplib
import ssl
import sys

host, port, tls_port, smtp_port, user, password = sys.argv[1:7]
port, tls_port, smtp_port = int(port), int(tls_port), int(smtp_port)

ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE

with smtplib.SMTP(host, smtp_port) as s:
    for i in range(3):
        body = "line one\r\n.starts with a dot\r\nline three\r\n" if i == 1 else f"body {i}\r\n"
        s.sendmail("x@example.org", [user], f"Subject: pop {i}\r\n\r\n{body}")

# STLS, CAPA, USER/PASS.
p = poplib.POP3(host, port)
caps = p.capa()
for c in ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "STLS", "USER", "SASL"]:
    assert c in caps, caps
p.stls(context=ctx)
assert "STLS" not in p.capa(), "STLS offered twice"
try:
    p.user(user)
    p.pass_("wrong")
    raise AssertionError("wrong password accepted")
except poplib.error_proto as e:
    assert b"[AUTH]" in e.args[0], e
p.user(user)
p.pass_(password)
count, size = p.stat()
assert count == 3, (count, size)
resp, listing, _ = p.list()
assert len(listing) == 3, listing
assert sum(int(l.split()[1]) for l in listing) == size
resp, uidls, _ = p.uidl()
uids = [l.split()[1] for l in uidls]
assert len(set(uids)) == 3, uids

# RETR undoes dot-stuffing; TOP gives headers and n lines.
resp, lines, octets = p.retr(2)
assert b".starts with a dot" in lines, lines
assert b"Subject: pop 1" in lines, lines
resp, lines, _ = p.top(2, 1)
assert lines[-1] == b"line one", lines

# DELE takes effect only at QUIT; a dropped connection deletes nothing.
p.dele(1)
try:
    p.retr(1)
    raise AssertionError("RETR of a deleted message")
except poplib.error_proto:
    pass
p.rset()
p.dele(1)
p.sock.close()  # no QUIT

# Implicit TLS and SASL PLAIN; the earlier DELE was not applied.
p = poplib.POP3_SSL(host, tls_port, context=ctx)
import base64
resp = p._shortcmd("AUTH PLAIN " + base64.b64encode(f"\0{user}\0{password}".encode()).decode())
assert resp.startswith(b"+OK"), resp
assert p.stat()[0] == 3
resp, uidls2, _ = p.uidl()
assert [l.split()[1] for l in uidls2] == uids, "UIDLs are stable"
p.dele(1)
p.quit()

p = poplib.POP3_SSL(host, tls_port, context=ctx)
p.user(user)
p.pass_(password)
assert p.stat()[0] == 2, "DELE applied at QUIT"
resp, uidls3, _ = p.uidl()
assert [l.split()[1] for l in uidls3] == uids[1:], "remaining UIDLs unchanged"
p.quit()
print("poplib: all checks passed")
