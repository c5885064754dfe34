#!/usr/bin/env python3
"""Drives mailkeep's IMAP server with IMAPClient (PyPI), a second independent client:
STARTTLS, IDLE woken by SMTP delivery, CONDSTORE, QRESYNC-style FETCH CHANGEDSINCE, MOVE,
special-use folders, multi-session expunge.

usage: imap_imapclient.py HOST IMAP_PORT SMTP_PORT USER PASSWORD [OTHER_USER]
(OTHER_USER, with the same password, is who USER shares a mailbox with over ACL.)
"""
import smtplib
import ssl
import sys
import time

from imapclient import IMAPClient

host, port, smtp_port, user, password = sys.argv[1:6]
other = sys.argv[6] if len(sys.argv) > 6 else None
port, smtp_port = int(port), int(smtp_port)

ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE


def send(subject):
    with smtplib.SMTP(host, smtp_port) as s:
        s.sendmail("x@example.org", [user], f"Subject: {subject}\r\n\r\nbody of {subject}\r\n")


def client():
    c = IMAPClient(host, port=port, ssl=False)
    c.starttls(ctx)
    c.login(user, password)
    return c


a = client()
assert b"IDLE" in a.capabilities() and b"CONDSTORE" in a.capabilities()
assert a.find_special_folder(b"\\Sent") == "Sent"
assert a.find_special_folder(b"\\Trash") == "Trash"

send("one")
info = a.select_folder("INBOX")
assert info[b"EXISTS"] == 1, info
assert b"HIGHESTMODSEQ" in info, info

# IDLE: a delivery over SMTP reaches the idling client as EXISTS, well within a second.
a.idle()
t0 = time.monotonic()
send("two")
responses = a.idle_check(timeout=10)
waited = time.monotonic() - t0
a.idle_done()
assert (2, b"EXISTS") in responses, responses
print(f"idle: EXISTS {waited * 1000:.0f} ms after the SMTP send began (including the SMTP session)")

# A second session changes flags and expunges; the first sees it in IDLE.
b = client()
b.select_folder("INBOX")
a.idle()
b.add_flags([1], [b"\\Seen"])
responses = a.idle_check(timeout=10)
a.idle_done()
# Untagged: (1, b"FETCH", (b"UID", 1, b"FLAGS", (b"\\Seen",)))
def flags_of(r):
    items = list(r[2])
    return items[items.index(b"FLAGS") + 1] if b"FLAGS" in items else ()


assert any(r[1] == b"FETCH" and b"\\Seen" in flags_of(r) for r in responses), responses

# CONDSTORE: MODSEQ grows; CHANGEDSINCE returns only what changed.
ms = a.fetch([1, 2], ["MODSEQ"])
base = max(v[b"MODSEQ"][0] for v in ms.values())
a.add_flags([2], [b"\\Flagged"])
changed = a.fetch([1, 2], ["FLAGS"], modifiers=[f"CHANGEDSINCE {base}"])
assert list(changed.keys()) == [2], changed

# MOVE and search by UID.
uids = a.search(["SUBJECT", "two"])
assert uids == [2], uids
a.move(uids, "Archive")
assert a.search(["ALL"]) == [1]
st = a.folder_status("Archive", [b"MESSAGES", b"UIDNEXT"])
assert st[b"MESSAGES"] == 1, st

# The other session deletes message 1; a's NOOP reports the EXPUNGE.
b.noop()
b.delete_messages([1])
b.expunge()
resp = a.noop()
assert any(r == (1, b"EXPUNGE") for r in resp[1]), resp
assert a.search(["ALL"]) == []

# APPEND, folders.
a.create_folder("Lists/rust")
a.append("Lists/rust", b"Subject: appended\r\n\r\nhi\r\n", flags=[b"\\Seen"])
assert a.folder_exists("Lists/rust")
assert a.folder_status("Lists/rust", [b"MESSAGES"])[b"MESSAGES"] == 1
a.delete_folder("Lists/rust")

# ACL (RFC 4314) through IMAPClient's own getacl/setacl: share a folder with the other user.
if other:
    a.create_folder("Team")
    a.append("Team", b"Subject: shared plan\r\n\r\nthe plan\r\n")
    a.setacl("Team", other, "lr")
    acl = dict(a.getacl("Team"))
    assert acl.get(other.lower().encode()) == b"lr", acl
    c = IMAPClient(host, port=port, ssl=False)
    c.login(other, password)
    shared = f"Shared/{user.lower()}/Team"
    names = [f[2] for f in c.list_folders()]
    assert shared in names, names
    assert c.namespace().other[0][0] == "Shared/", c.namespace()
    info = c.select_folder(shared, readonly=True)
    assert info[b"EXISTS"] == 1, info
    body = c.fetch([1], ["BODY.PEEK[]"])
    assert b"the plan" in next(iter(body.values()))[b"BODY[]"], body
    try:
        c.append(shared, b"Subject: not allowed\r\n\r\nx\r\n")
        raise AssertionError("APPEND without the i right was accepted")
    except IMAPClient.Error as e:
        assert "NOPERM" in str(e), e
    c.logout()
    # IMAPClient sends its argument as is: the empty rights must be quoted (RFC 4314 3.1
    # rights is an astring; a bare empty one is a syntax error).
    a.setacl("Team", other, '""')
    assert other.lower().encode() not in dict(a.getacl("Team")), a.getacl("Team")
    a.delete_folder("Team")
a.logout()
b.logout()
print("imapclient: all checks passed")
