#!/usr/bin/env bash
# Benchmarks our mupdate against a real Cyrus 3.6.1 mupdate master, same machine, same run,
# same client (mupdate-load), same workload:
#   A1 ACTIVATE 20 000 new mailboxes, 1 connection      A2 the same with 8 connections
#   A5 60 000 more with 8 connections (to 100 000)        A3/A4 FIND 20 000 random, 1 and 8 connections
#   A6 full UPDATE dump of 100 000 (median of 3)          A8 RSS of the server at 100 000
# Both servers commit every write durably before answering (Cyrus: twoskip with fsync;
# ours: redb Durability::Immediate). Needs root and Cyrus (scripts/install-test-deps.sh);
# installs nothing itself. Usage: loadtest/bench.sh [result.json]
# MUPDATE_BIN runs another build of ours (an older commit's, to compare).
# With PIN=1 both servers run on CPU 0 and the client on CPU 1 (needs 2 CPUs), so both pay
# the same cross-CPU wake-up per round trip; unpinned, the scheduler decides placement, and
# on a VM a cross-CPU wake-up costs about 40 us, more than our whole FIND.
set -euo pipefail
cd "$(dirname "$0")/.."
source loadtest/ours.sh
out=${1:-}
bench_setup
ours_pid=
trap cleanup_ours_and_cyrus EXIT
pin_cpus

cport=$(free_port)
cyrus_pid=$("${server_cpu[@]}" loadtest/cyrus-master.sh start "$work/cyrus" "$cport")

write_ours_conf "$work/ours" mupdate-master "mupdate_connections_max: 256" \
    "mupdate_http_listen: 127.0.0.1:0"
RUST_LOG=warn,mupdate::app=info "${server_cpu[@]}" "$bin" -C "$work/ours/imapd.conf" -m 2> "$work/ours/log" &
ours_pid=$!
oport=$(ours_port "$work/ours")

run() { # server port label args...
    local server=$1 port=$2 label=$3; shift 3
    local json
    json=$("${client_cpu[@]}" "$load" --addr "127.0.0.1:$port" "$@")
    echo "{\"server\":\"$server\",\"test\":\"$label\",\"result\":$json}" | tee -a "$work/results.jsonl" >&2
}
for side in cyrus ours; do
    if [ $side = cyrus ]; then port=$cport; pid=$cyrus_pid; else port=$oport; pid=$ours_pid; fi
    run $side "$port" A1 activate --conns 1 --count 20000 --prefix user.b --start 0
    run $side "$port" A2 activate --conns 8 --count 20000 --prefix user.b --start 20000
    run $side "$port" A5 activate --conns 8 --count 60000 --prefix user.b --start 40000
    run $side "$port" A3 find --conns 1 --count 20000 --prefix user.b --existing 100000
    run $side "$port" A4 find --conns 8 --count 20000 --prefix user.b --existing 100000
    run $side "$port" A6 dump --repeat 3
    run $side "$port" A8 rss --pid "$pid"
done
[ -n "$out" ] && cp "$work/results.jsonl" "$out"
python3 - "$work/results.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
r = {(x["server"], x["test"]): x["result"] for x in rows}
def line(test, what, key, better_high=True, fmt="{:,.0f}"):
    c, o = r[("cyrus", test)][key], r[("ours", test)][key]
    ratio = (o / c) if better_high else (c / o if o else float("inf"))
    print(f"| {test} | {what} | {fmt.format(c)} | {fmt.format(o)} | {ratio:.1f}x |")
print("| # | measure | Cyrus 3.6.1 | ours | ours vs Cyrus |")
print("| --- | --- | --- | --- | --- |")
line("A1", "durable ACTIVATE/s, 1 connection", "ops_per_s")
line("A2", "durable ACTIVATE/s, 8 connections", "ops_per_s")
line("A5", "durable ACTIVATE/s, 8 connections, 40k->100k", "ops_per_s")
line("A1", "ACTIVATE p99 ms, 1 connection", "p99_ms", False, "{:.2f}")
line("A2", "ACTIVATE p99 ms, 8 connections", "p99_ms", False, "{:.2f}")
line("A3", "FIND/s, 1 connection", "ops_per_s")
line("A4", "FIND/s, 8 connections", "ops_per_s")
line("A6", "full UPDATE dump of 100,000 (s)", "dump_seconds", False, "{:.3f}")
line("A8", "RSS at 100,000 mailboxes (KiB)", "rss_kib", False)
PY
