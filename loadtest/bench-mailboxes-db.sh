#!/usr/bin/env bash
# mailboxes.db benchmark (issue 13), ours against a real Cyrus 3.6.1 slave in the same run:
# a new slave's initial sync of COUNT (default 100 000) mailboxes from one Cyrus master,
# measured by a Cyrus-style reader (`mupdate-load lock-probe`) that read-locks the slave's
# mailboxes.db in a loop: the time until the file holds every record, and the longest any
# lookup waited for the lock meanwhile. Needs root and Cyrus (scripts/install-test-deps.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
source loadtest/ours.sh
count=${COUNT:-100000}
cargo build --release -q -p mupdate -p loadtest
load=$PWD/target/release/mupdate-load
bin=$PWD/target/release/mupdate
work=$(mktemp -d)
chmod 755 "$work"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    for d in cyrus cslave; do loadtest/cyrus-master.sh stop "$work/$d" || true; done
    rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
say() { echo "{\"server\":\"$1\",\"result\":$2}" | tee -a "$work/results.jsonl" >&2; }

cport=$(free_port)
loadtest/cyrus-master.sh start "$work/cyrus" "$cport" > /dev/null
"$load" --addr "127.0.0.1:$cport" activate --conns 8 --count "$count" --prefix user.m > /dev/null

# Cyrus's slave: its mailboxes.db is conf/mailboxes.db.
mkdir -p "$work/cslave/conf"
"$load" lock-probe --db "$work/cslave/conf/mailboxes.db" --records "$count" > "$work/cyrus.json" &
probe=$!
loadtest/cyrus-master.sh start "$work/cslave" "$(free_port)" "127.0.0.1:$cport" > /dev/null
wait "$probe"
say cyrus "$(cat "$work/cyrus.json")"

# Ours, a slave of the same Cyrus master, keeping mailboxes.db as under master(8).
write_ours_conf "$work/oslave" oslave "mupdate_server: 127.0.0.1:$cport" \
    "mupdate_authname: mupdate" "mupdate_password: mupdatepass" "mupdate_http_listen: off" \
    "mupdate_mailboxes_db: on"
"$load" lock-probe --db "$work/oslave/mailboxes.db" --records "$count" > "$work/ours.json" &
probe=$!
RUST_LOG=warn,mupdate=info "$bin" -C "$work/oslave/imapd.conf" 2> "$work/oslave/log" &
pids+=($!)
slave_log=$work/oslave/log
wait "$probe"
say ours "$(cat "$work/ours.json")"
grep -iE "held long|repacked|reconciled|synchron|listening" "$slave_log" >&2 || true

python3 - "$work/results.jsonl" "$count" <<'PY'
import json, sys
r = {x["server"]: x["result"] for x in map(json.loads, open(sys.argv[1]))}
c, o, n = r["cyrus"], r["ours"], int(sys.argv[2])
print(f"| measure ({n:,} mailboxes) | Cyrus 3.6.1 slave | ours | ratio |")
print("| --- | --- | --- | --- |")
print(f"| start -> mailboxes.db holds all (s) | {c['seconds']:.3f} | {o['seconds']:.3f} | {c['seconds']/max(o['seconds'],1e-3):.1f}x |")
print(f"| longest lookup wait for the lock (ms) | {c['wait_max_ms']:.1f} | {o['wait_max_ms']:.1f} | |")
print(f"| p99 lookup wait (ms) | {c['wait_p99_ms']:.2f} | {o['wait_p99_ms']:.2f} | |")
print(f"| lookups made meanwhile | {c['probes']} | {o['probes']} | |")
PY
