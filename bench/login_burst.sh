#!/usr/bin/env bash
# Memory under a login burst: N IMAP connections opened first, then LOGIN on all at once
# (bench/login_burst.py), against mailkeep (release build, embedded store) and, when the peers
# kit is there, Dovecot 2.3 on the same machine. Prints peak and settled RSS for each.
#
#   bench/login_burst.sh [N] [ROUNDS]      # default 500 connections, 2 rounds
#
# Each burst comes from 200 loopback addresses (127.0.1.x): mailkeep checks one address's
# logins one at a time, so a burst from one address would mostly be answered from its cache.
# The figure for Dovecot sums the RSS of its process tree (auth, login and imap processes
# share pages that each count in full), so it is an upper bound, not a like-for-like figure.
#
# Stops only the processes it started, by PID.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PEERS=${PEERS:-$ROOT/../shared/peers}
N=${1:-500}; ROUNDS=${2:-2}
OUT=${OUT:-/var/tmp/mailkeep-bench/login-burst}
W=$(mktemp -d /var/tmp/mailkeep-login-burst.XXXXXX)
IMAP=2621
mkdir -p "$OUT"
ulimit -n 65536 2>/dev/null || true

(cd "$ROOT" && cargo build --release --bin mailkeep)
MK=$ROOT/target/release/mailkeep
"$MK" init --hostname mail.example.test --domain example.test --data "$W" \
  --smtp-listen none --submission-listen none --submissions-listen none \
  --imap-listen "127.0.0.1:$IMAP" --imaps-listen none --pop3-listen none --pop3s-listen none \
  --https-listen none --managesieve-listen none >/dev/null
# Room for N connections from one address, authenticated or not.
sed -i "s/^max_connections_per_ip = [0-9]*/max_connections_per_ip = $((N + 100))/" "$W/mailkeep.toml"
sed -i "s/^max_unauthenticated_per_ip = [0-9]*/max_unauthenticated_per_ip = $((N + 100))/" "$W/mailkeep.toml"
for u in user1 user2; do
  echo "pw-$u" | "$MK" user add $u@example.test --config "$W/mailkeep.toml" >/dev/null
done

MK_PID=""
cleanup() { [ -z "$MK_PID" ] || kill "$MK_PID" 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT

for r in $(seq "$ROUNDS"); do
  MAILKEEP_LOG=warn "$MK" serve --config "$W/mailkeep.toml" >"$OUT/serve.log" 2>&1 &
  MK_PID=$!
  for _ in $(seq 100); do grep -q ready "$OUT/serve.log" 2>/dev/null && break; sleep 0.1; done
  # Two bursts on the same server, for two users (the second is not answered from the
  # login cache the first filled).
  for u in user1 user2; do
    python3 "$ROOT/bench/login_burst.py" --port "$IMAP" --pid "$MK_PID" --user $u@example.test \
      --password pw-$u -n "$N" >"$OUT/mailkeep-$r-$u.json"
    echo "mailkeep round $r, burst for $u: $(cat "$OUT/mailkeep-$r-$u.json")"
  done
  kill "$MK_PID"; wait "$MK_PID" 2>/dev/null || true; MK_PID=""
done

if [ -x "$PEERS/setup.sh" ]; then
  [ -d /var/tmp/mail-peers/postfix ] || "$PEERS/setup.sh" >/dev/null
  STARTED=""
  "$PEERS/peers.sh" status >/dev/null 2>&1 || { "$PEERS/peers.sh" start >/dev/null; STARTED=1; }
  eval "$("$PEERS/peers.sh" env)"
  DOVECOT_PID=$(cat "$WORKDIR/run/dovecot.pid")
  for r in $(seq "$ROUNDS"); do
    python3 "$ROOT/bench/login_burst.py" --port "$IMAP_PORT" --pid "$DOVECOT_PID" \
      --user user1@example.test --password pw-user1 -n "$N" >"$OUT/dovecot-$r.json" \
      || echo "dovecot round $r failed (see $OUT)"
    echo "dovecot round $r: $(cat "$OUT/dovecot-$r.json")"
  done
  [ -z "$STARTED" ] || "$PEERS/peers.sh" stop >/dev/null
fi
