#!/usr/bin/env python3
"""Submits N messages of about L bytes through SMTP submission with AUTH PLAIN (loopback,
where mailkeep allows a password without TLS), S sessions in parallel, many messages per
session. Used by bench/queue.sh to fill mailkeep's queue.

usage: submit_load.py PORT USER PASSWORD TO N [S] [L]
"""
import smtplib, sys, threading

port, user, password, to, n = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
sessions = int(sys.argv[6]) if len(sys.argv) > 6 else 20
length = int(sys.argv[7]) if len(sys.argv) > 7 else 4096
line = ("x" * 76 + "\r\n")
body = (line * (length // len(line) + 1))[:length]
errors = []


def worker(k):
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=120) as s:
            s.login(user, password)
            for i in range(k, n, sessions):
                msg = (f"From: {user}\r\nTo: {to}\r\nSubject: queue bench {i}\r\n"
                       f"Message-ID: <qb-{i}@bench.test>\r\n\r\n{body}")
                s.sendmail(user, [to], msg)
    except Exception as e:  # reported at the end
        errors.append(repr(e))


threads = [threading.Thread(target=worker, args=(k,)) for k in range(sessions)]
for t in threads:
    t.start()
for t in threads:
    t.join()
if errors:
    print("errors:", errors[:3], file=sys.stderr)
    sys.exit(1)
