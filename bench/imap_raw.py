#!/usr/bin/env python3
"""Server-side IMAP timings without client parsing: the same commands as imap_bench.py's
fetch steps, over a raw socket that only looks for the tagged reply (imaplib's own parsing
takes most of the wall time of the big FETCHes, for any server).

usage: imap_raw.py PORT USER PASSWORD [--repeat 3]     (loopback only)
Prints JSON: best wall seconds per step.
"""
import json, random, re, socket, sys, time

port, user, password = int(sys.argv[1]), sys.argv[2], sys.argv[3]
repeat = int(sys.argv[5]) if len(sys.argv) > 5 and sys.argv[4] == "--repeat" else 3


def session():
    s = socket.create_connection(("127.0.0.1", port), timeout=120)
    f = s.makefile("rb")
    f.readline()
    return s, f


def cmd(s, f, tag, line, keep=None):
    s.sendall(tag + b" " + line + b"\r\n")
    n = 0
    while True:
        l = f.readline()
        if keep is not None:
            keep.append(l)
        if not l:
            raise ConnectionError("closed")
        n += len(l)
        m = re.search(rb"\{(\d+)\}\r\n$", l)
        if m:  # a literal: read its bytes without looking at them
            k = int(m.group(1))
            f.read(k)
            n += k
            continue
        if l.startswith(tag + b" "):
            if not l.startswith(tag + b" OK"):
                raise RuntimeError(l)
            return n


best = {}
for it in range(repeat):
    s, f = session()
    cmd(s, f, b"a", b"LOGIN %s %s" % (user.encode(), password.encode()))
    cmd(s, f, b"b", b"EXAMINE INBOX")
    t = time.perf_counter(); cmd(s, f, b"c", b"FETCH 1:* (FLAGS UID RFC822.SIZE ENVELOPE)")
    steps = {"fetch_all_meta": time.perf_counter() - t}
    lines = []
    cmd(s, f, b"u", b"UID SEARCH ALL", keep=lines)
    all_uids = [int(x) for l in lines if l.startswith(b"* SEARCH") for x in l.split()[2:]]
    uids = sorted(random.Random(42).sample(all_uids, min(1000, len(all_uids))))
    t = time.perf_counter(); cmd(s, f, b"d", b"UID FETCH " + ",".join(map(str, uids)).encode() + b" (BODY.PEEK[])")
    steps["fetch_bodies_batch"] = time.perf_counter() - t
    t = time.perf_counter()
    for i, u in enumerate(uids):
        cmd(s, f, b"e%d" % i, b"UID FETCH %d (BODY.PEEK[])" % u)
    steps["fetch_bodies_seq"] = time.perf_counter() - t
    s.close()
    for k, v in steps.items():
        best[k] = min(best.get(k, 1e9), round(v, 4))
print(json.dumps(best))
