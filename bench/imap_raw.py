#!/usr/bin/env python3
"""Server-side IMAP timings without client parsing: imap_bench.py's steps (same order, search
terms and body sample), over a raw socket that reads in large chunks and only looks for
literals and the tagged reply. imaplib's own parsing takes most of the wall time of the big
FETCHes, for any server, so its figures measure the client there.

usage: imap_raw.py PORT USER PASSWORD [--repeat 3]     (loopback only)
Prints JSON: best wall seconds per step, and the search hit counts (to compare servers).
"""
import json, random, re, socket, sys, time

port, user, password = int(sys.argv[1]), sys.argv[2], sys.argv[3]
repeat = int(sys.argv[5]) if len(sys.argv) > 5 and sys.argv[4] == "--repeat" else 3


def session():
    s = socket.create_connection(("127.0.0.1", port), timeout=120)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    r = Reader(s)
    r.line()
    return s, r


class Reader:
    """Reads replies in large chunks and finds line ends with bytes.find: per line it only
    checks for a literal marker and the tag, so the client costs little next to the server."""

    def __init__(self, s):
        self.s, self.buf, self.pos = s, bytearray(), 0

    def fill(self):
        if self.pos > 1 << 20:
            del self.buf[: self.pos]
            self.pos = 0
        chunk = self.s.recv(1 << 20)
        if not chunk:
            raise ConnectionError("closed")
        self.buf += chunk

    def line(self):
        while (nl := self.buf.find(b"\r\n", self.pos)) < 0:
            self.fill()
        start, self.pos = self.pos, nl + 2
        return bytes(self.buf[start:nl])

    def until_tagged(self, tag, keep=None):
        n, prefix = 0, tag + b" "
        while True:
            while (nl := self.buf.find(b"\r\n", self.pos)) < 0:
                self.fill()
            start = self.pos
            if keep is not None:
                keep.append(bytes(self.buf[start:nl]))
            self.pos = nl + 2
            n += nl + 2 - start
            if self.buf[nl - 1] == 0x7D:  # "}": a literal follows; skip its bytes unread
                k = int(self.buf[self.buf.rindex(b"{", start, nl) + 1 : nl - 1])
                while len(self.buf) < self.pos + k:
                    self.fill()
                self.pos += k
                n += k
                continue
            if self.buf.startswith(prefix, start):
                if not self.buf.startswith(prefix + b"OK", start):
                    raise RuntimeError(bytes(self.buf[start:nl]))
                return n


def cmd(s, r, tag, line, keep=None):
    s.sendall(tag + b" " + line + b"\r\n")
    return r.until_tagged(tag, keep)


STEPS = ["login_select", "fetch_all_meta", "search_header", "search_body", "search_text",
         "fetch_bodies_batch", "fetch_bodies_seq"]


def one_iter():
    """imap_bench.py's steps, in its order and with its arguments (terms, sample)."""
    steps, hits = {}, {}
    t = time.perf_counter()
    s, f = session()
    cmd(s, f, b"a", b"LOGIN %s %s" % (user.encode(), password.encode()))
    cmd(s, f, b"b", b"EXAMINE INBOX")
    steps["login_select"] = time.perf_counter() - t
    t = time.perf_counter(); cmd(s, f, b"c", b"FETCH 1:* (FLAGS UID RFC822.SIZE ENVELOPE)")
    steps["fetch_all_meta"] = time.perf_counter() - t
    lines = []
    cmd(s, f, b"u", b"UID SEARCH ALL", keep=lines)  # the UIDs imap_bench.py collects from the FETCH
    uids = [int(x) for l in lines if l.startswith(b"* SEARCH") for x in l.split()[2:]]
    for name, crit in [("search_header", b"HEADER Subject quarterly"), ("search_body", b"BODY xylophone"),
                       ("search_text", b"TEXT msgno-12345")]:
        out = []
        t = time.perf_counter(); cmd(s, f, b"s", b"UID SEARCH " + crit, keep=out)
        steps[name] = time.perf_counter() - t
        hits[name] = sum(len(l.split()) - 2 for l in out if l.startswith(b"* SEARCH"))
    sample = sorted(random.Random(42).sample(uids, min(1000, len(uids))))
    t = time.perf_counter(); cmd(s, f, b"d", b"UID FETCH " + ",".join(map(str, sample)).encode() + b" (BODY.PEEK[])")
    steps["fetch_bodies_batch"] = time.perf_counter() - t
    t = time.perf_counter()
    for i, u in enumerate(sample):
        cmd(s, f, b"e%d" % i, b"UID FETCH %d (BODY.PEEK[])" % u)
    steps["fetch_bodies_seq"] = time.perf_counter() - t
    cmd(s, f, b"z", b"LOGOUT")
    s.close()
    return steps, hits


best, hits = {}, {}
for it in range(repeat):
    steps, hits = one_iter()
    for k, v in steps.items():
        best[k] = min(best.get(k, 1e9), round(v, 4))
print(json.dumps({"best_s": best, "hits": hits}))
