#!/usr/bin/env bash
# Outbound queue benchmark: deliver MESSAGES already-queued messages of ~4 KiB to Postfix's
# smtp-sink on loopback, Postfix (the peer from ../shared/peers, relayhost = the sink) against
# mailkeep (queue.relay = the sink, no TLS: smtp-sink has none), same machine, same run.
# Each fills its queue first without delivering (Postfix: the hold queue; mailkeep: the sink is
# not running yet, so the first attempt fails and the retry waits an hour), then the sink
# starts, the queue is released (postsuper -H ALL + postqueue -f; mailkeep queue retry all)
# and the time until the queue is empty is measured.
#
# usage: bench/queue.sh [MESSAGES] [ROUNDS]      (defaults 20000 2)
# env:   PEERS=../shared/peers  OUT=/var/tmp/mailkeep-bench/queue
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PEERS=${PEERS:-$ROOT/../shared/peers}
M=${1:-20000}; ROUNDS=${2:-2}
OUT=${OUT:-/var/tmp/mailkeep-bench/queue}; W=/var/tmp/mailkeep-bench/queue-data
SINK_PORT=2700; MK_SUB=2621
mkdir -p "$OUT"

[ -x "$PEERS/setup.sh" ] || { echo "peers kit not found at $PEERS (set PEERS)" >&2; exit 2; }
[ -d /var/tmp/mail-peers/postfix ] || "$PEERS/setup.sh" >/dev/null
"$PEERS/peers.sh" status >/dev/null 2>&1 || "$PEERS/peers.sh" start >/dev/null
eval "$("$PEERS/peers.sh" env)"
PF=$WORKDIR/postfix
SINK_BIN=$(command -v smtp-sink || echo /usr/sbin/smtp-sink)

(cd "$ROOT" && cargo build --release --bin mailkeep)
MK=$ROOT/target/release/mailkeep

SINK=""
MK_PID=""
stop_mk() { [ -z "$MK_PID" ] || { kill "$MK_PID" 2>/dev/null; wait "$MK_PID" 2>/dev/null; MK_PID=""; } || true; }
start_sink() {
  "$SINK_BIN" -u nobody -m 1024 "127.0.0.1:$SINK_PORT" 1024 &
  SINK=$!
  for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$SINK_PORT") 2>/dev/null && return; sleep 0.1; done
}
stop_sink() { [ -n "$SINK" ] && kill "$SINK" 2>/dev/null; wait "$SINK" 2>/dev/null || true; SINK=""; }

# Postfix relays everything to the sink while this runs; its settings come back on exit.
saved=$(postconf -c "$PF" relayhost default_transport relay_transport smtpd_data_restrictions)
restore() {
  stop_sink
  while IFS= read -r l; do postconf -c "$PF" -e "$l"; done <<<"$saved"
  postfix -c "$PF" reload >/dev/null 2>&1 || true
  stop_mk
}
# Stops only the processes it started (sink, mailkeep), by PID, however the script ends.
trap restore EXIT
trap 'exit 130' INT TERM
postconf -c "$PF" -e "relayhost = [127.0.0.1]:$SINK_PORT" 'default_transport = smtp' \
  'relay_transport = smtp' 'smtp_tls_security_level = none'

pf_queued() { find "$WORKDIR/spool/hold" "$WORKDIR/spool/deferred" "$WORKDIR/spool/active" "$WORKDIR/spool/incoming" "$WORKDIR/spool/maildrop" -type f 2>/dev/null | wc -l; }

postfix_round() {
  trap stop_sink EXIT  # runs in $(...): its own sink, stopped however it ends
  postconf -c "$PF" -e 'smtpd_data_restrictions = check_client_access static:HOLD'
  postfix -c "$PF" reload >/dev/null 2>&1; sleep 1
  python3 "$PEERS/smtp_bench.py" --port "$SMTP_PORT" --to "user@sink.test" -m "$M" -s 20 -l 4096 -d \
    --timeout 900 --label fill --json "$OUT/postfix-fill.json" >/dev/null || true
  for _ in $(seq 600); do [ "$(pf_queued)" -ge "$M" ] && break; sleep 0.5; done
  postconf -c "$PF" -e 'smtpd_data_restrictions ='
  postfix -c "$PF" reload >/dev/null 2>&1; sleep 1
  start_sink
  local t0 t1; t0=$(date +%s.%N)
  postsuper -c "$PF" -H ALL >/dev/null 2>&1; postqueue -c "$PF" -f
  for _ in $(seq 18000); do [ "$(pf_queued)" -eq 0 ] && break; sleep 0.05; done
  t1=$(date +%s.%N)
  stop_sink
  echo "$t0 $t1" | awk -v m="$M" '{printf "%.2f s  %.0f msg/s\n", $2-$1, m/($2-$1)}'
}

mk_queued() { sqlite3 -readonly "$W/store/mailkeep.db" 'SELECT count(*) FROM queue' 2>/dev/null || echo -1; }

mailkeep_round() {
  trap 'stop_sink; stop_mk' EXIT  # runs in $(...): its own processes
  stop_mk
  rm -rf "$W"
  "$MK" init --hostname mail.example.test --domain example.test --data "$W" \
    --smtp-listen 127.0.0.1:2620 --submission-listen "127.0.0.1:$MK_SUB" --submissions-listen none \
    --imap-listen none --imaps-listen none --pop3-listen none --pop3s-listen none --https-listen none --managesieve-listen none >/dev/null
  # One account sends the whole load: its outbound limits ([limits]) are off here.
  sed -i 's/reverse_dns = true/reverse_dns = false/; s/^retry_first = .*/retry_first = "1h"/; s/^# relay = .*/relay = "127.0.0.1:'"$SINK_PORT"'"/; s/^# relay_tls = .*/relay_tls = "none"/; s/^max_connections_per_ip = 20$/max_connections_per_ip = 1000/; s/^messages_per_hour = .*/messages_per_hour = 0/; s/^messages_per_day = .*/messages_per_day = 0/; s/^recipients_per_message = .*/recipients_per_message = 0/; s/^new_recipients_per_day = .*/new_recipients_per_day = 0/' "$W/mailkeep.toml"
  echo "pw-bench-sender" | "$MK" user add sender@example.test --config "$W/mailkeep.toml" >/dev/null
  MAILKEEP_LOG=warn "$MK" serve --config "$W/mailkeep.toml" >"$OUT/serve.log" 2>&1 &
  MK_PID=$!
  for _ in $(seq 50); do grep -q ready "$OUT/serve.log" 2>/dev/null && break; sleep 0.1; done
  python3 "$ROOT/bench/submit_load.py" "$MK_SUB" sender@example.test pw-bench-sender user@sink.test "$M" 20 4096
  for _ in $(seq 600); do [ "$(mk_queued)" -ge "$M" ] && break; sleep 0.5; done
  sleep 2  # every first attempt has failed (the sink is not running): all wait an hour now
  start_sink
  local t0 t1; t0=$(date +%s.%N)
  "$MK" queue retry all --config "$W/mailkeep.toml" >/dev/null
  for _ in $(seq 18000); do [ "$(mk_queued)" = "0" ] && break; sleep 0.05; done
  t1=$(date +%s.%N)
  stop_sink
  stop_mk
  echo "$t0 $t1" | awk -v m="$M" '{printf "%.2f s  %.0f msg/s\n", $2-$1, m/($2-$1)}'
}

for r in $(seq "$ROUNDS"); do
  echo "round $r: postfix  $(postfix_round)"
  echo "round $r: mailkeep $(mailkeep_round)"
done
