#!/usr/bin/env python3
"""The attack on open sessions: N connections to one login listener are opened first from one
address, then a wrong password is tried on each in turn until the server bans the address;
then the right password is tried at once on every connection still open. Finally it waits
(bounded) for every connection to be closed and reads the last line each one got.

usage: ban_open_sessions.py imap|pop3|smtp PORT SOURCE USER WRONG RIGHT N

Prints one JSON object: guesses (wrong passwords answered before the ban), banned_at (the
guess whose answer said the address is banned), right (how the right password was answered
on each open connection: "ok", "no", or "closed"), closed (connections closed by the server
within the wait), last_lines (the last two lines of each), close_s (seconds from the ban to the
last close), refused (the greeting of a new connection after the ban).
Uses only the standard library; loopback only; every wait is bounded.
"""
import base64
import json
import socket
import sys
import time

proto, port, src, user, wrong, right, n = sys.argv[1:8]
port, n = int(port), int(n)
TIMEOUT = 10


class Conn:
    def __init__(self):
        self.sock = socket.create_connection(("127.0.0.1", port), TIMEOUT, source_address=(src, 0))
        self.buf = b""
        self.lines = []
        self.closed = False
        self.tag = 0

    def line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                self.closed = True
                raise EOFError
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        text = line.decode("utf-8", "replace")
        self.lines.append(text)
        return text

    def send(self, data):
        self.sock.sendall(data.encode())

    def greet(self):
        g = self.line()
        if proto == "smtp":
            self.send("EHLO attacker.test\r\n")
            while not self.line().startswith("250 "):
                pass
        return g

    def login(self, password):
        """'ok', 'no' or 'banned' (the answer said so), or raises EOFError."""
        if proto == "imap":
            self.tag += 1
            tag = "a%d" % self.tag
            self.send('%s LOGIN "%s" "%s"\r\n' % (tag, user, password))
            out = []
            while True:
                line = self.line()
                out.append(line)
                if line.startswith(tag + " "):
                    break
            # A BYE after the NO tells of the ban.
            if line.split()[1] == "OK":
                return "ok"
            try:
                self.sock.settimeout(0.5)
                out.append(self.line())
            except (socket.timeout, EOFError):
                pass
            finally:
                self.sock.settimeout(TIMEOUT)
        elif proto == "pop3":
            self.send("USER %s\r\n" % user)
            self.line()
            self.send("PASS %s\r\n" % password)
            line = self.line()
            if line.startswith("+OK"):
                return "ok"
            out = [line]
        else:
            cred = base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode()).decode()
            self.send("AUTH PLAIN %s\r\n" % cred)
            line = self.line()
            if line.startswith("235"):
                return "ok"
            out = [line]
            try:
                self.sock.settimeout(0.5)
                out.append(self.line())
            except (socket.timeout, EOFError):
                pass
            finally:
                self.sock.settimeout(TIMEOUT)
        return "banned" if any("banned" in l for l in out) else "no"


conns = []
for _ in range(n):
    c = Conn()
    c.greet()
    conns.append(c)

guesses, banned_at, ban_time = 0, None, None
for i in range(n):
    try:
        r = conns[i].login(wrong)
    except EOFError:
        continue
    guesses += 1
    if r == "banned":
        banned_at, ban_time = guesses, time.time()
        break

right_answers = []
for c in conns:
    if c.closed:
        right_answers.append("closed")
        continue
    try:
        right_answers.append(c.login(right))
    except (EOFError, OSError):
        right_answers.append("closed")

deadline = time.time() + 5
last_close = ban_time or time.time()
for c in conns:
    while not c.closed and time.time() < deadline:
        c.sock.settimeout(max(0.01, deadline - time.time()))
        try:
            c.line()
        except (EOFError, ConnectionResetError):
            c.closed = True
        except socket.timeout:
            break
    if c.closed:
        last_close = max(last_close, time.time())

try:
    refused = Conn().line()
except (EOFError, OSError) as e:
    refused = "no greeting: %s" % e

print(json.dumps({
    "guesses": guesses,
    "banned_at": banned_at,
    "right": right_answers,
    "closed": sum(1 for c in conns if c.closed),
    "last_lines": [" | ".join(c.lines[-2:]) for c in conns],
    "close_s": round(last_close - (ban_time or last_close), 3),
    "refused": refused,
}))
