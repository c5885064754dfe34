#!/usr/bin/env python3
"""Prints how many messages a mailkeep user's INBOX holds, read from the embedded store
(committed rows only: what IMAP will show). Used as smtp_bench.py --count-cmd.

usage: count_inbox.py STORE_DIR ADDRESS
"""
import sqlite3
import sys

store, address = sys.argv[1], sys.argv[2].lower()
db = sqlite3.connect(f"file:{store}/mailkeep.db?mode=ro", uri=True, timeout=30)
(n,) = db.execute(
    "SELECT count(*) FROM messages m JOIN mailboxes b ON b.id = m.mailbox "
    "JOIN accounts a ON a.id = b.account WHERE a.address_key = ? AND b.role = 'inbox'",
    (address,),
).fetchone()
print(n)
