#!/usr/bin/env python3
"""Several IMAP clients flag, move, expunge and append on one mailbox while SMTP delivers to
it. At the end every client must see the same mailbox (after a NOOP), equal to a fresh
session's view, and no UID may ever have named two different messages.

usage: imap_concurrency.py HOST IMAP_PORT SMTP_PORT USER PASSWORD [PRELOAD]
PRELOAD messages are delivered first (enough makes the server keep the mailbox's list between
SELECTs, which the workers' re-SELECTs then exercise).
Deterministic: each worker's operations come from a seeded random generator.
"""
import imaplib
import random
import re
import smtplib
import sys
import threading

host, port, smtp_port, user, password = sys.argv[1:6]
port, smtp_port = int(port), int(smtp_port)
PRELOAD = int(sys.argv[6]) if len(sys.argv) > 6 else 0
WORKERS, OPS, DELIVERIES = 4, 60, 80

lock = threading.Lock()
uid_owner = {}  # INBOX UID -> Message-ID, as ever seen by any client
errors = []


def note(uid, mid):
    with lock:
        old = uid_owner.setdefault(uid, mid)
        if old != mid:
            errors.append(f"UID {uid} named {old} and later {mid}")


def record(m):
    typ, data = m.uid("FETCH", "1:*", "(UID BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
    assert typ == "OK", data
    for item in data:
        if isinstance(item, tuple):
            uid = int(re.search(rb"UID (\d+)", item[0]).group(1))
            mid = item[1].strip()
            note(uid, mid)


def connect():
    m = imaplib.IMAP4(host, port)
    m.login(user, password)
    assert m.select("INBOX")[0] == "OK"
    return m


def deliver(count=DELIVERIES, prefix="smtp"):
    with smtplib.SMTP(host, smtp_port) as s:
        for i in range(count):
            s.sendmail("x@example.org", [user], f"Message-ID: <{prefix}{i}@example.org>\r\nSubject: {prefix} {i}\r\n\r\nbody\r\n")


def worker(n):
    rnd = random.Random(n)
    m = connect()
    try:
        for i in range(OPS):
            op = rnd.choice(["flag", "flag", "unflag", "move", "delete", "append", "noop", "reselect"])
            typ, data = m.search(None, "ALL")
            seqs = data[0].split()
            if op == "append":
                msg = f"Message-ID: <w{n}-{i}@example.org>\r\nSubject: append {n} {i}\r\n\r\nx\r\n".encode()
                typ, data = m.append("INBOX", None, None, msg)
                assert typ == "OK", data
            elif op == "reselect":
                # A new view of the same mailbox, built while the others keep changing it.
                assert m.select("INBOX")[0] == "OK"
            elif op == "noop" or not seqs:
                m.noop()
            else:
                seq = rnd.choice(seqs).decode()
                if op == "flag":
                    m.store(seq, "+FLAGS", rnd.choice(["(\\Seen)", "(\\Flagged)", "($Work)"]))
                elif op == "unflag":
                    m.store(seq, "-FLAGS", "(\\Seen)")
                elif op == "move":
                    m.uid("MOVE", m.fetch(seq, "(UID)")[1][0].split()[2].rstrip(b")").decode(), "Archive")
                elif op == "delete":
                    m.store(seq, "+FLAGS", "(\\Deleted)")
                    m.expunge()
            if i % 10 == 0:
                record(m)
        record(m)
    except Exception as e:  # noqa: BLE001 - reported below
        with lock:
            errors.append(f"worker {n}: {e!r}")
    return m


if PRELOAD:
    deliver(PRELOAD, "pre")
sessions = [None] * WORKERS


def run(n):
    sessions[n] = worker(n)


threads = [threading.Thread(target=run, args=(n,)) for n in range(WORKERS)]
threads.append(threading.Thread(target=deliver))
for t in threads:
    t.start()
for t in threads:
    t.join(timeout=120)
assert not any(t.is_alive() for t in threads), "a worker hung"
assert not errors, errors


def view(m):
    m.noop()
    # imaplib keeps unsolicited FETCH/EXPUNGE responses and returns them with the next
    # command's; the NOOP has applied them, so drop them before asking for the view.
    m.untagged_responses.clear()
    typ, data = m.fetch("1:*", "(UID FLAGS)")
    assert typ == "OK", data
    out = []
    for line in data:
        if line is None:
            continue
        uid = int(re.search(rb"UID (\d+)", line).group(1))
        flags = sorted(re.search(rb"FLAGS \(([^)]*)\)", line).group(1).split())
        out.append((uid, flags))
    return out


fresh = connect()
want = view(fresh)
for n, m in enumerate(sessions):
    got = view(m)
    assert got == want, f"client {n} sees\n{got}\nfresh session sees\n{want}"
record(fresh)
assert not errors, errors
# The store's own count, not a session's view.
typ, data = fresh.status("INBOX", "(MESSAGES)")
assert typ == "OK" and f"MESSAGES {len(want)}".encode() in data[0], (data, len(want))
uids = [u for u, _ in want]
assert uids == sorted(uids) and len(set(uids)) == len(uids)
print(f"concurrency: {len(want)} messages, {len(uid_owner)} UIDs seen, all views equal")
