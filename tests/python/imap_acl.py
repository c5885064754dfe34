#!/usr/bin/env python3
"""Shared mailboxes and ACLs (RFC 4314) driven with Python's imaplib.

usage: imap_acl.py HOST IMAP_PORT OWNER GRANTEE PASSWORD
OWNER shares a mailbox with GRANTEE; every command GRANTEE runs is checked against the rights
RFC 4314 section 4 requires. The first failure exits non-zero.
"""
import imaplib
import re
import sys

host, port, owner, grantee, password = sys.argv[1:6]
port = int(port)
SHARED = f"Shared/{owner}/Team"


def ok(res, what):
    typ, data = res
    assert typ == "OK", f"{what}: {typ} {data}"
    return data


def refused(fn, code, what):
    """The command must fail with a tagged NO carrying [code] (imaplib raises on NO)."""
    try:
        typ, data = fn()
    except imaplib.IMAP4.error as e:
        assert f"[{code}]" in str(e), f"{what}: expected [{code}], got {e}"
        return
    # Some imaplib methods (SELECT) return NO instead of raising.
    assert typ == "NO" and f"[{code}]".encode() in data[0], f"{what}: expected NO [{code}], got {typ} {data}"



def login(user):
    m = imaplib.IMAP4(host, port)
    ok(m.login(user, password), f"LOGIN {user}")
    return m


def listed(m, pattern="*"):
    out = {}
    for line in ok(m.list('""', pattern), "LIST"):
        if line is None:
            continue
        g = re.match(rb'\(([^)]*)\) "/" "?([^"]*)"?$', line)
        assert g, line
        out[g.group(2).decode()] = g.group(1).decode().split()
    return out


def untagged(m, name):
    return [d for d in m.untagged_responses.pop(name, []) if d is not None]


a = login(owner)
caps = a.capabilities
assert "ACL" in caps and "RIGHTS=TEXK" in caps, caps  # imaplib upper-cases them
ns = ok(a.namespace(), "NAMESPACE")[0].decode()
assert ns == '(("" "/")) (("Shared/" "/")) NIL', ns
ok(a.create("Team"), "CREATE Team")
msg = f"From: {owner}\r\nTo: {grantee}\r\nSubject: plans\r\n\r\nThe plan.\r\n".encode()
ok(a.append("Team", r"(\Flagged)", None, msg), "APPEND")
ok(a.append("Team", None, None, msg.replace(b"plans", b"more plans")), "APPEND")
data = ok(a.myrights("Team"), "MYRIGHTS own")
assert data[0].decode() == "Team lrswipkxteacd", data
data = ok(a.getacl("Team"), "GETACL own")
assert data[0].decode() == f"Team {owner} lrswipkxteacd", data

# Nothing shared yet: the mailbox does not exist for the grantee.
b = login(grantee)
assert not any(n.startswith("Shared") for n in listed(b)), listed(b)
refused(lambda: b.select(SHARED), "NONEXISTENT", "SELECT unshared")
refused(lambda: b.myrights(SHARED), "NONEXISTENT", "MYRIGHTS unshared")
refused(lambda: b.getacl(SHARED), "NONEXISTENT", "GETACL unshared")

# Read-only sharing.
ok(a.setacl("Team", grantee, "lr"), "SETACL lr")
data = ok(a.getacl("Team"), "GETACL")
assert data[0].decode() == f"Team {owner} lrswipkxteacd {grantee} lr", data
# imaplib has no LISTRIGHTS method; its generic command path sends it.
imaplib.Commands["LISTRIGHTS"] = ("AUTH", "SELECTED")
typ, dat = a._simple_command("LISTRIGHTS", "Team", grantee)
data = ok(a._untagged_response(typ, dat, "LISTRIGHTS"), "LISTRIGHTS")
assert data[0].decode() == f'Team {grantee} "" l r s w i p k x t e a c d', data
for bad, what in [("lrQ", "upper case"), ("lrq", "unknown right")]:
    try:
        a.setacl("Team", grantee, bad)
        raise AssertionError(f"SETACL with {what} was accepted")
    except imaplib.IMAP4.error as e:
        assert "BAD" in str(e) or "rights" in str(e) or "right" in str(e), e
refused(lambda: a.setacl("Team", "not-an-address", "lr"), "CANNOT", "bad identifier")
# An address nobody has is accepted, so SETACL cannot be used to probe for accounts.
ok(a.setacl("Team", "nobody@nowhere.test", "lr"), "SETACL unknown address")
ok(a.deleteacl("Team", "nobody@nowhere.test"), "DELETEACL unknown address")
refused(lambda: a.setacl("Team", owner, "lr"), "CANNOT", "owner's own rights")

boxes = listed(b)
assert boxes.get("Shared") == ["\\Noselect", "\\HasChildren"], boxes
assert boxes.get(f"Shared/{owner}") == ["\\Noselect", "\\HasChildren"], boxes
assert boxes.get(SHARED) == ["\\HasNoChildren"], boxes
assert "Team" not in boxes, "the owner's names do not leak into the grantee's namespace"
data = ok(b.myrights(SHARED), "MYRIGHTS")
assert data[0].decode() == f"{SHARED} lr", data
refused(lambda: b.getacl(SHARED), "NOPERM", "GETACL without a")
refused(lambda: b.setacl(SHARED, grantee, "lrswipkxtea"), "NOPERM", "SETACL without a")
data = ok(b.status(SHARED, "(MESSAGES UNSEEN)"), "STATUS shared")
assert b"MESSAGES 2" in data[0] and b"UNSEEN 2" in data[0], data
# Without a right to change anything SELECT opens read-only (RFC 4314 5.2); imaplib raises.
try:
    b.select(SHARED)
    raise AssertionError("SELECT with lr opened read-write")
except imaplib.IMAP4.readonly:
    pass
ok(b.select(SHARED, readonly=True), "EXAMINE shared")
perm = untagged(b, "PERMANENTFLAGS")
assert perm == [b"()"], perm
data = ok(b.fetch("1", "(FLAGS BODY[])"), "FETCH shared")
assert b"The plan." in data[0][1], data
data = ok(b.fetch("1", "(FLAGS)"), "FETCH FLAGS")
assert b"\\Seen" not in data[0], f"no s right: a body FETCH must not set \\Seen: {data}"
refused(lambda: b.store("1", "+FLAGS", r"(\Seen)"), "READ-ONLY", "STORE read-only")
refused(lambda: b.append(SHARED, None, None, msg), "NOPERM", "APPEND without i")
refused(lambda: b.delete(SHARED), "NOPERM", "DELETE without x")
refused(lambda: b.create(SHARED + "/Sub"), "NOPERM", "CREATE without k")
# The same answer where no such user exists: the shared namespace does not list accounts.
refused(lambda: b.create("Shared/nobody@nowhere.test/Sub"), "NOPERM", "CREATE for no one")
refused(lambda: b.create("Shared"), "NOPERM", "CREATE of the namespace itself")
# Copying out needs only r here and i in the grantee's own INBOX; flags come along.
data = ok(b.copy("1", "INBOX"), "COPY to own INBOX")
ok(b.close(), "CLOSE")
ok(b.select("INBOX"), "SELECT own INBOX")
data = ok(b.search(None, "SUBJECT", "plans"), "SEARCH copied")
assert data[0].split() == [b"1"], data
data = ok(b.fetch("1", "(FLAGS)"), "FETCH copied flags")
assert b"\\Flagged" in data[0], data

# Writing: s w i t e (and k for children).
ok(a.setacl("Team", grantee, "+switek"), "SETACL +switek")
data = ok(b.myrights(SHARED), "MYRIGHTS after +")
assert data[0].decode() == f"{SHARED} lrswiktecd", data
untagged(b, "PERMANENTFLAGS")
ok(b.select(SHARED), "SELECT read-write")
perm = untagged(b, "PERMANENTFLAGS")[0].decode()
assert perm == r"(\Answered \Flagged \Deleted \Seen \Draft \*)", perm
ok(b.store("2", "+FLAGS", r"(\Seen $Important)"), "STORE shared")
ok(b.append(SHARED, r"(\Draft)", None, msg.replace(b"plans", b"from the grantee")), "APPEND shared")
ok(a.select("Team"), "owner SELECT")
data = ok(a.search(None, "SUBJECT", '"from the grantee"'), "owner sees the append")
assert data[0].split() == [b"3"], data
data = ok(a.fetch("2", "(FLAGS)"), "owner sees the flags")
assert b"\\Seen" in data[0] and b"$Important" in data[0], data
ok(a.close(), "owner CLOSE")
ok(b.create(SHARED + "/Sub"), "CREATE in shared with k")
boxes = listed(a)
assert "Team/Sub" in boxes, boxes
data = ok(a.getacl("Team/Sub"), "GETACL inherited")
assert f"{grantee} lrswiktecd" in data[0].decode(), data
ok(b.store("3", "+FLAGS", r"(\Deleted)"), "STORE \\Deleted")
ok(b.expunge(), "EXPUNGE with e")
data = ok(b.search(None, "ALL"), "after EXPUNGE")
assert data[0].split() == [b"1", b"2"], data

# MOVE out needs t and e (RFC 6851 4.2): with l r e only, refused.
ok(a.setacl("Team", grantee, "lre"), "SETACL lre")
imaplib.Commands["MOVE"] = ("SELECTED",)
ok(b.select(SHARED, readonly=False), "SELECT lre")
refused(lambda: b._simple_command("MOVE", "1", "INBOX"), "NOPERM", "MOVE without t")
ok(b.close(), "CLOSE")

# Flags the grantee may not set are dropped on COPY (RFC 4314 4): only l r i now.
ok(a.setacl("Team", grantee, "lri"), "SETACL lri")
ok(b.select("INBOX"), "SELECT INBOX")
ok(b.store("1", "+FLAGS", r"(\Seen \Flagged)"), "flag own copy")
data = ok(b.copy("1", SHARED), "COPY into shared")
ok(a.select("Team"), "owner SELECT")
data = ok(a.fetch("3", "(FLAGS)"), "copied flags")
assert b"\\Seen" not in data[0] and b"\\Flagged" not in data[0], data
ok(a.close(), "owner CLOSE")

# Negative rights take away what anyone grants.
ok(a.setacl("Team", "anyone", "lr"), "SETACL anyone")
ok(a.deleteacl("Team", grantee), "DELETEACL")
ok(a.setacl("Team", "-" + grantee, "r"), "SETACL negative")
data = ok(b.myrights(SHARED), "MYRIGHTS negative")
assert data[0].decode() == f"{SHARED} l", data
refused(lambda: b.select(SHARED), "NOPERM", "SELECT without r")
ok(a.deleteacl("Team", "anyone"), "DELETEACL anyone")
ok(a.deleteacl("Team", "-" + grantee), "DELETEACL negative")
refused(lambda: b.select(SHARED), "NONEXISTENT", "SELECT after revoking")
# The child keeps the rights it inherited; its parent shows only as a level (RFC 4314 4).
boxes = listed(b)
assert boxes.get(SHARED) == ["\\Noselect", "\\HasChildren"], boxes
assert boxes.get(SHARED + "/Sub") == ["\\HasNoChildren"], boxes
ok(a.deleteacl("Team/Sub", grantee), "DELETEACL child")
assert not any(n.startswith("Shared") for n in listed(b)), listed(b)

for m in (a, b):
    m.logout()
print("imap_acl.py: all checks passed")
