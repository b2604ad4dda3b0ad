#!/usr/bin/env bash
# Issue 16's benchmarks, beside a real Cyrus 3.6.1 in the same run:
#   W  durable ACTIVATE/s, 8 connections, 20,000 new mailboxes: Cyrus's master; ours -m;
#      a three-instance elected cluster of ours on etcd with mupdate_sync_replicas 0 and 1,
#      writing to the master and through a follower (which forwards). REPEAT rounds
#      (default 3), each measuring all of them in turn, so that the machine's drift falls on
#      all alike; the summary gives each one's median and its ratio to Cyrus's median
#   F  failover time, mupdate_sync_replicas 1, lease 3 s: the master SIGKILLed while a
#      writer ACTIVATEs through a follower; the longest pause between acknowledged writes
#      from the kill until one is acknowledged under the successor, ROUNDS rounds (default 20)
# Needs root, Cyrus and etcd (scripts/install-test-deps.sh). Usage:
#   loadtest/bench-failover.sh [result.jsonl]
set -euo pipefail
cd "$(dirname "$0")/.."
source loadtest/ours.sh
out=${1:-}
bench_setup
cargo build --release -q -p mupdate --features ha
ours_pid=
trap cleanup_ours_and_cyrus EXIT
results=$work/results.jsonl
activate() { # server label port
    local json
    json=$("$load" --addr "127.0.0.1:$3" activate --conns 8 --count 20000 --prefix user.s --start 0)
    echo "{\"server\":\"$1\",\"test\":\"$2\",\"result\":$json}" | tee -a "$results" >&2
}

for _ in $(seq 1 "${REPEAT:-3}"); do
    rm -rf "$work/cyrus" "$work/ours" "$work/ha0" "$work/ha1"
    cport=$(free_port)
    loadtest/cyrus-master.sh start "$work/cyrus" "$cport" > /dev/null
    activate cyrus master "$cport"
    loadtest/cyrus-master.sh stop "$work/cyrus"

    write_ours_conf "$work/ours" mupdate-master "mupdate_connections_max: 256"
    RUST_LOG=warn,mupdate::app=info "$bin" -C "$work/ours/imapd.conf" -m 2> "$work/ours/log" &
    ours_pid=$!
    activate ours-m master "$(ours_port "$work/ours")"
    stop_pid "$ours_pid"
    ours_pid=

    for sync in 0 1; do
        python3 loadtest/failover.py --bin "$bin" --load "$load" --work "$work/ha$sync" \
            --sync "$sync" --lease 3 writes | tee -a "$results" >&2
    done
done
python3 loadtest/failover.py --bin "$bin" --load "$load" --work "$work/rounds" \
    --sync 1 --lease 3 rounds "${ROUNDS:-20}" | tee -a "$results" >&2

[ -n "$out" ] && cp "$results" "$out"
python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
runs = {}
for x in rows:
    runs.setdefault((x["server"], x["test"]), []).append(x["result"])
def median_run(key):
    """The run with the median ACTIVATE/s (the lower middle one of an even count)."""
    ordered = sorted(runs[key], key=lambda x: x["ops_per_s"])
    return ordered[(len(ordered) - 1) // 2]
cyrus = median_run(("cyrus", "master"))["ops_per_s"]
print(f"{len(runs[('cyrus', 'master')])} rounds; each row: the median run, and every run's ACTIVATE/s")
print()
print("| durable ACTIVATE, 8 connections | median ACTIVATE/s | its p99 ms | vs Cyrus's median | every run /s |")
print("| --- | --- | --- | --- | --- |")
for key, what in [(("cyrus", "master"), "Cyrus 3.6.1 master"),
                  (("ours-m", "master"), "ours -m (no failover)"),
                  (("ours-ha-sync0", "master"), "elected master, sync_replicas 0"),
                  (("ours-ha-sync1", "master"), "elected master, sync_replicas 1"),
                  (("ours-ha-sync0", "follower"), "through a follower, sync_replicas 0"),
                  (("ours-ha-sync1", "follower"), "through a follower, sync_replicas 1")]:
    x = median_run(key)
    every = ", ".join(f"{r['ops_per_s']:,.0f}" for r in runs[key])
    print(f"| {what} | {x['ops_per_s']:,.0f} | {x['p99_ms']:.2f} | {x['ops_per_s'] / cyrus:.1f}x | {every} |")
r = {key: results[-1] for key, results in runs.items()}
f = r[("ours-ha-sync1", "failover")]
print()
print(f"failover (SIGKILL, lease {f['lease_s']} s, {f['rounds']} rounds): longest pause between"
      f" acknowledged writes: min {f['min_s']:.2f} s, median {f['median_s']:.2f} s,"
      f" p90 {f['p90_s']:.2f} s, max {f['max_s']:.2f} s; the killed instance rejoined by delta"
      f" {f['rejoined_delta']} times, in full {f['rejoined_full']} times")
PY
