#!/usr/bin/env bash
# Side-by-side IMAP benchmark: mailkeep vs Dovecot (Debian package, Maildir), same machine,
# same client (Python imaplib, ../shared/peers/imap_bench.py), same mailbox contents: N
# messages from ../shared/peers/populate.py (deterministic, ~4.4 KB, search needles).
# The same steps again with bench/imap_raw.py (a client that does not parse: the servers' own
# times). Then idle connections: ../shared/peers/imap_idle.py holds C logged-in IDLE sessions
# and measures the server's memory per connection.
#
# usage: bench/imap.sh [MESSAGES] [IDLE_CONNECTIONS]          (defaults 20000 10000)
# env:   PEERS=../shared/peers  OUT=/var/tmp/mailkeep-bench/imap  SKIP_POPULATE=1 (reuse data)
# Stops only the processes it started, by PID.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PEERS=${PEERS:-$ROOT/../shared/peers}
N=${1:-20000}; C=${2:-10000}
W=/var/tmp/mailkeep-bench/imap-data; OUT=${OUT:-/var/tmp/mailkeep-bench/imap}
SMTP=2610; IMAP=2611
mkdir -p "$OUT"
ulimit -n 65536 || true

[ -x "$PEERS/setup.sh" ] || { echo "peers kit not found at $PEERS (set PEERS)" >&2; exit 2; }
[ -d /var/tmp/mail-peers/postfix ] || "$PEERS/setup.sh" >/dev/null
"$PEERS/peers.sh" status >/dev/null 2>&1 || RAISE_INOTIFY=16384 "$PEERS/peers.sh" start >/dev/null
eval "$("$PEERS/peers.sh" env)"

(cd "$ROOT" && cargo build --release --bin mailkeep)
MK=$ROOT/target/release/mailkeep
MK_PID=""
# Stops only the server this script started, by PID, however the script ends.
stop_mk() { [ -z "$MK_PID" ] || { kill "$MK_PID" 2>/dev/null; wait "$MK_PID" 2>/dev/null; MK_PID=""; } || true; }
trap stop_mk EXIT
trap 'exit 130' INT TERM
if [ -z "${SKIP_POPULATE:-}" ]; then
  rm -rf "$W"
  "$MK" init --hostname mail.example.test --domain example.test --data "$W" \
    --smtp-listen "127.0.0.1:$SMTP" --submission-listen none --submissions-listen none --imap-listen "127.0.0.1:$IMAP" --imaps-listen none \
    --pop3-listen none --pop3s-listen none --https-listen none --managesieve-listen none >/dev/null
  sed -i 's/reverse_dns = true/reverse_dns = false/; s/max_connections_per_ip = 20$/max_connections_per_ip = 1000/; s/^max_messages_per_sender_domain = .*/max_messages_per_sender_domain = 0/' "$W/mailkeep.toml"
  # The IMAP steps are measured, not SMTP: sender authentication is off for the fill, as the
  # Postfix peer does none (with no resolver answering, each message waited on DNS).
  sed -i 's/^spf = true/spf = false/; s/^dkim = true/dkim = false/; s/^arc = true/arc = false/; s/^dmarc = true/dmarc = false/; s/^iprev = true/iprev = false/' "$W/mailkeep.toml"
  for u in imapbig user1 user2 user3 user4 user5; do
    echo "pw-$u" | "$MK" user add "$u@example.test" --config "$W/mailkeep.toml" >/dev/null
  done
fi
# Room for the idle connections (also when SKIP_POPULATE reuses a config made for fewer).
sed -i "s/^max_connections_per_ip = [0-9]* *$/max_connections_per_ip = $((C + 100))/" "$W/mailkeep.toml"
sed -i "s/^max_unauthenticated_per_ip = [0-9]*/max_unauthenticated_per_ip = $((C + 100))/" "$W/mailkeep.toml"
MAILKEEP_LOG=warn "$MK" serve --config "$W/mailkeep.toml" >"$OUT/serve.log" 2>&1 &
MK_PID=$!
for _ in $(seq 50); do grep -q ready "$OUT/serve.log" 2>/dev/null && break; sleep 0.1; done

count_dovecot() { find "$WORKDIR/mail/example.test/imapbig/Maildir/cur" "$WORKDIR/mail/example.test/imapbig/Maildir/new" -type f 2>/dev/null | wc -l; }
if [ -z "${SKIP_POPULATE:-}" ]; then
  echo "populating $N messages into each server"
  python3 "$PEERS/populate.py" --port "$SMTP" --to imapbig@example.test -n "$N" -c 4 >/dev/null
  if [ "$(count_dovecot)" -ne "$N" ]; then
    "$PEERS/peers.sh" reset imapbig >/dev/null
    python3 "$PEERS/populate.py" --port "$LMTP_PORT" --lmtp --to imapbig@example.test -n "$N" -c 4 >/dev/null
  fi
fi
DOVECOT_PID=$(cat "$WORKDIR/run/dovecot.pid")

bench() { # label port pid
  python3 "$PEERS/imap_bench.py" --port "$2" --user imapbig@example.test --password pw-imapbig \
    --repeat 3 --readonly --server-pid "$3" --wait-quiet 60 --label "$1" --json "$OUT/$1.json" >/dev/null
}
bench dovecot "$IMAP_PORT" "$DOVECOT_PID"
bench mailkeep "$IMAP" "$MK_PID"
# The same steps with a client that does not parse (bench/imap_raw.py): the servers' own times.
python3 "$ROOT/bench/imap_raw.py" "$IMAP_PORT" imapbig@example.test pw-imapbig --repeat 3 >"$OUT/raw-dovecot.json"
python3 "$ROOT/bench/imap_raw.py" "$IMAP" imapbig@example.test pw-imapbig --repeat 3 >"$OUT/raw-mailkeep.json"

idle() { # label port pid
  U=$(for u in user1 user2 user3 user4 user5; do printf '%s@example.test:pw-%s,' $u $u; done)
  python3 "$PEERS/imap_idle.py" --port "$2" --users "${U%,}" -n "$C" --ramp 50 --hold 10 \
    --server-pid "$3" --json "$OUT/idle-$1.json" >/dev/null || echo "idle run for $1 failed (see $OUT)"
}
# A fresh mailkeep for the idle run: the database pages the steps above read are mapped
# (file-backed, shared) and would blur the per-connection figure as the kernel drops them.
stop_mk
MAILKEEP_LOG=warn "$MK" serve --config "$W/mailkeep.toml" >"$OUT/serve.log" 2>&1 &
MK_PID=$!
for _ in $(seq 50); do grep -q ready "$OUT/serve.log" 2>/dev/null && break; sleep 0.1; done
idle mailkeep "$IMAP" "$MK_PID"
idle dovecot "$IMAP_PORT" "$DOVECOT_PID"

python3 - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
d = json.load(open(f"{out}/dovecot.json")); m = json.load(open(f"{out}/mailkeep.json"))
def best(r, step):
    its = [it[step]["wall_s"] for it in r["iterations"] if step in it]
    return min(its) if its else float("nan")
print("%-20s %10s %10s %8s" % ("step (best of 3)", "dovecot s", "mailkeep s", "ratio"))
for step in ["login_select", "fetch_all_meta", "search_header", "search_body", "search_text",
             "fetch_bodies_batch", "fetch_bodies_seq"]:
    a, b = best(d, step), best(m, step)
    print("%-20s %10.3f %10.3f %7.2fx" % (step, a, b, a / b if b else float("nan")))
rd = json.load(open(f"{out}/raw-dovecot.json"))["best_s"]
rm = json.load(open(f"{out}/raw-mailkeep.json"))["best_s"]
print("raw client (bench/imap_raw.py):")
for step, a in rd.items():
    b = rm.get(step, float("nan"))
    print("%-20s %10.3f %10.3f %7.2fx" % (step, a, b, a / b if b else float("nan")))
for who in ["mailkeep", "dovecot"]:
    p = f"{out}/idle-{who}.json"
    if os.path.exists(p):
        i = json.load(open(p))
        pc = i.get("per_conn_kb", {})
        print(f"idle {who}: {i.get('established')} connections, {pc.get('pss')} KiB PSS and "
              f"{pc.get('rss')} KiB RSS per connection (server process tree)")
PY
stop_mk
