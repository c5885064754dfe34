#!/usr/bin/env python3
"""Memory of an IMAP server under a burst of simultaneous logins.

Opens N connections to 127.0.0.1:PORT (each greeted first), then sends LOGIN on all of them at
once (a barrier releases every thread together), from --sources client addresses, waits for every answer, logs out and closes
them all, and lets the server settle. The server's resident size (VmRSS of PID, and of its
children when it forks, as Dovecot does) is sampled every 20 ms throughout.

Prints one JSON object: rss_kib at start, peak during the burst, after the answers, and
settled after the close (the lowest of the last samples of SETTLE seconds), logins ok/failed,
and the burst's wall time. Loopback only; bounded in connections and time.
"""
import argparse
import json
import os
import socket
import threading
import time


def tree(pid):
    pids = [pid]
    try:
        kids = open(f"/proc/{pid}/task/{pid}/children").read().split()
    except OSError:
        kids = []
    for k in kids:
        pids += tree(int(k))
    return pids


def rss_kib(pid):
    total = 0
    for p in tree(pid):
        try:
            for line in open(f"/proc/{p}/status"):
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


class Sampler(threading.Thread):
    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop = pid, 0, False
        self.last = rss_kib(pid)

    def run(self):
        while not self.stop:
            self.last = rss_kib(self.pid)
            self.peak = max(self.peak, self.last)
            time.sleep(0.02)


def read_line(sock, buf):
    while b"\r\n" not in buf[0]:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed")
        buf[0] += chunk
    line, buf[0] = buf[0].split(b"\r\n", 1)
    return line


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pid", type=int, required=True, help="the server's process")
    ap.add_argument("--user", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("-n", type=int, default=500, help="connections (at most 2000)")
    ap.add_argument("--settle", type=float, default=30.0, help="seconds to wait after closing")
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--calm", action="store_true", help="log in one connection at a time")
    ap.add_argument("--sources", type=int, default=200,
                    help="client addresses (127.0.1.1 on): a server may serialize the logins "
                    "of one address, a burst comes from many")
    a = ap.parse_args()
    n = min(a.n, 2000)
    # One (failed, so nothing is cached) login first: "start" is then a server that has run
    # its login path once (its code paged in, its thread pools started), as any server in use
    # has.
    s = socket.create_connection(("127.0.0.1", a.port), timeout=a.timeout)
    buf = [b""]
    read_line(s, buf)
    s.sendall(b"w LOGIN \"%s\" \"%s\"\r\nz LOGOUT\r\n" % (a.user.encode(), b"not-" + a.password.encode()))
    while not read_line(s, buf).startswith(b"z "):
        pass
    s.close()
    time.sleep(15.0)
    start = rss_kib(a.pid)
    sampler = Sampler(a.pid)
    sampler.start()
    socks = []
    for i in range(n):
        src = "127.0.%d.%d" % (1 + (i % a.sources) // 250, 1 + (i % a.sources) % 250)
        s = socket.create_connection(("127.0.0.1", a.port), timeout=a.timeout,
                                     source_address=(src, 0))
        buf = [b""]
        read_line(s, buf)  # the greeting
        socks.append((s, buf))
    opened = rss_kib(a.pid)
    barrier = threading.Barrier(n + 1)
    results = [None] * n

    def login(i):
        s, buf = socks[i]
        barrier.wait()
        try:
            s.sendall(b"a LOGIN \"%s\" \"%s\"\r\n" % (a.user.encode(), a.password.encode()))
            while True:
                line = read_line(s, buf)
                if line.startswith(b"a "):
                    results[i] = line.split()[1] == b"OK"
                    break
        except (OSError, ConnectionError):
            results[i] = False

    t0 = time.time()
    if a.calm:
        barrier = threading.Barrier(1)
        for i in range(n):
            login(i)
    else:
        threads = [threading.Thread(target=login, args=(i,), daemon=True) for i in range(n)]
        for t in threads:
            t.start()
        t0 = time.time()
        barrier.wait()
        for t in threads:
            t.join(a.timeout)
    burst_s = time.time() - t0
    answered = rss_kib(a.pid)
    peak = sampler.peak
    for s, _ in socks:
        try:
            s.sendall(b"z LOGOUT\r\n")
        except OSError:
            pass
        s.close()
    lows = []
    end = time.time() + a.settle
    while time.time() < end:
        time.sleep(0.2)
        lows.append(rss_kib(a.pid))
    sampler.stop = True
    print(json.dumps({
        "connections": n,
        "logins_ok": sum(1 for r in results if r),
        "logins_failed": sum(1 for r in results if not r),
        "burst_s": round(burst_s, 3),
        "rss_kib": {
            "start": start,
            "opened": opened,
            "peak": max(peak, answered),
            "answered": answered,
            "settled": min(lows[-10:]) if lows else answered,
        },
    }))


if __name__ == "__main__":
    main()
