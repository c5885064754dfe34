#!/usr/bin/env python3
"""Verifies every DKIM signature of a message with dkimpy (a verifier nobody here wrote),
with the public keys given on the command line instead of DNS.

Usage: dkim_verify.py MESSAGE_FILE NAME=TXT [NAME=TXT...]
  NAME is the record name (selector._domainkey.domain), TXT its value (v=DKIM1; k=...; p=...).
Prints one line per signature and exits non-zero unless every one verifies.
"""
import sys

import dkim

message = open(sys.argv[1], "rb").read()
records = {}
for arg in sys.argv[2:]:
    name, txt = arg.split("=", 1)
    records[name.rstrip(".").lower()] = txt.encode()


def dnsfunc(name, timeout=5):
    if isinstance(name, bytes):
        name = name.decode()
    return records.get(name.rstrip(".").lower())


d = dkim.DKIM(message)
count = message.count(b"\nDKIM-Signature:") + (1 if message.startswith(b"DKIM-Signature:") else 0)
if count == 0:
    print("FAIL no DKIM-Signature header")
    sys.exit(1)
ok = True
for i in range(count):
    good = d.verify(idx=i, dnsfunc=dnsfunc)
    sig = d.signature_fields or {}
    alg = sig.get(b"a", b"?").decode()
    dom = sig.get(b"d", b"?").decode()
    print(f"{'ok' if good else 'FAIL'} signature {i}: a={alg} d={dom}")
    ok = ok and good
if not ok:
    sys.exit(1)
print("dkim=pass for every signature")
