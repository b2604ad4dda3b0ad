#!/usr/bin/env bash
# Reads under writes (issue 14), ours against a real Cyrus 3.6.1 mupdate master in the same
# run: each server is loaded with EXISTING (default 20 000) mailboxes, then
#   R1 FIND alone: READERS (4) connections FIND random existing mailboxes for SECONDS (10)
#   R2 the same FINDs while WRITERS (4) connections ACTIVATE new mailboxes, durably, as
#      fast as answers come (they start a second before the FINDs and end a second after)
#   W  the writers' own ACTIVATE/s during R2
# ROUNDS (3) rounds, alternating servers; the table has medians. Goal: FIND p99 in R2 at
# most 3x R1, FIND/s in R2 at least 0.5x R1. Needs root and Cyrus
# (scripts/install-test-deps.sh). MUPDATE_BIN runs another build of ours (an older commit's,
# to compare). Usage: loadtest/bench-reads-under-writes.sh [result.jsonl]
set -euo pipefail
cd "$(dirname "$0")/.."
source loadtest/ours.sh
out=${1:-}
existing=${EXISTING:-20000}
readers=${READERS:-4}
writers=${WRITERS:-4}
seconds=${SECONDS_EACH:-10}
rounds=${ROUNDS:-3}
bench_setup
ours_pid=
writer_pid=
cleanup() {
    stop_pid "$writer_pid"
    stop_pid "$ours_pid"
    loadtest/cyrus-master.sh stop "$work/cyrus" || true
    rm -rf "$work"
}
trap cleanup EXIT
pin_cpus

cport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cyrus_pid=$("${server_cpu[@]}" loadtest/cyrus-master.sh start "$work/cyrus" "$cport")
write_ours_conf "$work/ours" mupdate-master "mupdate_connections_max: 256"
RUST_LOG=warn,mupdate::app=info "${server_cpu[@]}" "$bin" -C "$work/ours/imapd.conf" -m 2> "$work/ours/log" &
ours_pid=$!
oport=$(ours_port "$work/ours")

record() { # server round test json
    echo "{\"server\":\"$1\",\"round\":$2,\"test\":\"$3\",\"result\":$4}" | tee -a "$work/results.jsonl" >&2
}
for side in cyrus ours; do
    if [ $side = cyrus ]; then port=$cport; else port=$oport; fi
    "$load" --addr "127.0.0.1:$port" activate --conns 8 --count "$existing" --prefix user.r >/dev/null
done
next=0
for round in $(seq 1 "$rounds"); do
    for side in cyrus ours; do
        if [ $side = cyrus ]; then port=$cport; else port=$oport; fi
        sync
        sleep 1
        json=$("${client_cpu[@]}" "$load" --addr "127.0.0.1:$port" find --conns "$readers" \
            --count 100000000 --seconds "$seconds" --prefix user.r --existing "$existing")
        record $side "$round" R1 "$json"
        "${client_cpu[@]}" "$load" --addr "127.0.0.1:$port" activate --conns "$writers" \
            --count 100000000 --seconds $((seconds + 2)) --prefix "user.w$side$round." \
            --start "$next" > "$work/writers.json" &
        writer_pid=$!
        sleep 1
        json=$("${client_cpu[@]}" "$load" --addr "127.0.0.1:$port" find --conns "$readers" \
            --count 100000000 --seconds "$seconds" --prefix user.r --existing "$existing")
        record $side "$round" R2 "$json"
        wait "$writer_pid"
        writer_pid=
        record $side "$round" W "$(cat "$work/writers.json")"
    done
done
[ -n "$out" ] && cp "$work/results.jsonl" "$out"
python3 - "$work/results.jsonl" "$readers" "$writers" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
readers, writers = sys.argv[2], sys.argv[3]
def med(server, test, key):
    return statistics.median(r["result"][key] for r in rows if r["server"] == server and r["test"] == test)
print(f"| measure ({readers} readers, {writers} writers) | Cyrus 3.6.1 | ours | ours vs Cyrus |")
print("| --- | --- | --- | --- |")
def line(what, test, key, high=True, fmt="{:,.0f}"):
    c, o = med("cyrus", test, key), med("ours", test, key)
    ratio = o / c if high else (c / o if o else float("inf"))
    print(f"| {what} | {fmt.format(c)} | {fmt.format(o)} | {ratio:.1f}x |")
line("R1 FIND/s alone", "R1", "ops_per_s")
line("R2 FIND/s under writes", "R2", "ops_per_s")
line("R1 FIND p99 ms alone", "R1", "p99_ms", False, "{:.3f}")
line("R2 FIND p99 ms under writes", "R2", "p99_ms", False, "{:.3f}")
line("W durable ACTIVATE/s during R2", "W", "ops_per_s")
for server in ("cyrus", "ours"):
    t = med(server, "R2", "ops_per_s") / med(server, "R1", "ops_per_s")
    p = med(server, "R2", "p99_ms") / med(server, "R1", "p99_ms")
    print(f"| {server}: under writes / alone | throughput {t:.2f}x | p99 {p:.1f}x | |")
PY
