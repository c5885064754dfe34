#!/usr/bin/env bash
# Side-by-side SMTP ingest benchmark: mailkeep vs Postfix delivering to Dovecot over LMTP,
# same machine, same client (Postfix's smtp-source via the shared peers kit), same load.
# A message counts when it is visible in the mailbox: Maildir files for Dovecot, committed
# rows in the INBOX for mailkeep (bench/count_inbox.py). fsync stays on for both.
#
# usage: bench/smtp_ingest.sh [MESSAGES] [SESSIONS] [ROUNDS]     (defaults 20000 20 2)
# env:   PEERS=../shared/peers  OUT=/var/tmp/mailkeep-bench/results  MK_PORT=2600
#        MK_ENV="VAR=value ..." (environment for the mailkeep server, e.g. MALLOC_CONF=...)
# Stops only the processes it started, by PID.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PEERS=${PEERS:-$ROOT/../shared/peers}
M=${1:-20000}; S=${2:-20}; ROUNDS=${3:-2}
W=/var/tmp/mailkeep-bench; OUT=${OUT:-$W/results}; MK_PORT=${MK_PORT:-2600}
mkdir -p "$OUT"

[ -x "$PEERS/setup.sh" ] || { echo "peers kit not found at $PEERS (set PEERS)" >&2; exit 2; }
[ -d /var/tmp/mail-peers/postfix ] || "$PEERS/setup.sh" >/dev/null
"$PEERS/peers.sh" status >/dev/null 2>&1 || "$PEERS/peers.sh" start >/dev/null
eval "$("$PEERS/peers.sh" env)"

(cd "$ROOT" && cargo build --release --bin mailkeep)
MK=$ROOT/target/release/mailkeep
rm -rf "$W/data"
"$MK" init --hostname mail.example.test --domain example.test --data "$W/data" --smtp-listen "127.0.0.1:$MK_PORT" --submission-listen none --submissions-listen none --imap-listen none --imaps-listen none --pop3-listen none --pop3s-listen none --https-listen none --managesieve-listen none >/dev/null
# One sender domain sends the whole load: the per-domain hourly rate is off here.
sed -i 's/reverse_dns = true/reverse_dns = false/; s/max_connections_per_ip = 20/max_connections_per_ip = 1000/; s/^max_messages_per_sender_domain = .*/max_messages_per_sender_domain = 0/' "$W/data/mailkeep.toml"
# The same work as the Postfix + Dovecot peer, which checks no SPF, DKIM or DMARC: mailkeep's
# sender authentication is off here (its cost is DNS round trips, measured separately).
sed -i 's/^spf = true/spf = false/; s/^dkim = true/dkim = false/; s/^arc = true/arc = false/; s/^dmarc = true/dmarc = false/; s/^iprev = true/iprev = false/' "$W/data/mailkeep.toml"
for r in $(seq 1 "$ROUNDS"); do
  echo "pw-user$r-bench" | "$MK" user add "mk$r@example.test" --config "$W/data/mailkeep.toml" >/dev/null
done
MAILKEEP_LOG=warn ${MK_ENV:-} "$MK" serve --config "$W/data/mailkeep.toml" >"$W/serve.log" 2>&1 &
MK_PID=$!
# Stops only the server this script started, by PID, however the script ends.
trap 'kill "$MK_PID" 2>/dev/null || true' EXIT
trap 'exit 130' INT TERM
for _ in $(seq 50); do grep -q ready "$W/serve.log" 2>/dev/null && break; sleep 0.1; done
rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
RSS_START=$(rss "$MK_PID")

run() { # label port to count-option count-value pids...
  local label=$1 port=$2 to=$3 copt=$4 cval=$5; shift 5
  python3 "$PEERS/smtp_bench.py" --port "$port" --to "$to" -m "$M" -s "$S" "$copt" "$cval" \
    $(for p in "$@"; do echo --server-pid "$p"; done) --wait-quiet 60 --label "$label" --json "$OUT/$label.json" >/dev/null
  python3 - "$OUT/$label.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print("%-16s accept %7.1f msg/s   end-to-end %7.1f msg/s   server CPU %6.2f s   foreign CPU %5.2f s" % (
    d["label"], d["accept_msg_per_s"], d["e2e_msg_per_s"], d["server_cpu_s"], d["foreign_cpu_s"]))
PY
}

for r in $(seq 1 "$ROUNDS"); do
  u=user$r
  "$PEERS/peers.sh" reset "$u" >/dev/null
  run "postfix-dovecot-$r" "$SMTP_PORT" "$u@example.test" --maildir "$WORKDIR/mail/example.test/$u/Maildir" $SERVER_PIDS
  run "mailkeep-$r" "$MK_PORT" "mk$r@example.test" --count-cmd "$ROOT/bench/count_inbox.py $W/data/store mk$r@example.test" "$MK_PID"
done
sleep 10
RSS_END=$(rss "$MK_PID")
echo "mailkeep RSS at rest: ${RSS_START} KiB after start, ${RSS_END} KiB after the runs (10 s idle)"
python3 - "$OUT" "$ROUNDS" <<'PY'
import json, sys
out, rounds = sys.argv[1], int(sys.argv[2])
for r in range(1, rounds + 1):
    p = json.load(open(f"{out}/postfix-dovecot-{r}.json"))["e2e_msg_per_s"]
    m = json.load(open(f"{out}/mailkeep-{r}.json"))["e2e_msg_per_s"]
    print(f"round {r}: mailkeep / postfix+dovecot end-to-end = {m / p:.2f}x")
PY
kill "$MK_PID"
