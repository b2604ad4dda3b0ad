#!/usr/bin/env bash
# The cost of trace export: our master with no OTLP endpoint ("off") against the same master
# exporting every span to a local OTLP/HTTP sink ("on", the SDK's default sampler,
# parentbased_always_on: every command is traced; SAMPLER=... and SAMPLER_ARG=... set
# OTEL_TRACES_SAMPLER and its argument for the "on" server). Each round
# starts a fresh server per mode, off and on alternating, so that both see the same machine
# state; the summary gives the median over ROUNDS of throughput and of the server's CPU time
# per operation (from /proc, steadier than throughput on a shared machine).
#   W1 ACTIVATE 20 000, 8 connections     W2 ACTIVATE 4 000, 1 connection
#   F1 FIND 150 000, 8 connections         F2 FIND 20 000, 1 connection
# With PIN=1 the server (with its export threads) runs on CPU 0, the client and the sink on
# CPU 1, so that the CPU the export takes shows as throughput rather than as a change of
# thread placement. Needs nothing but this repository.
# Usage: [PIN=1] [ROUNDS=3] loadtest/bench-tracing.sh [result.jsonl]
set -euo pipefail
cd "$(dirname "$0")/.."
source loadtest/ours.sh
out=${1:-}
rounds=${ROUNDS:-3}
sampler=${SAMPLER:-}
sampler_arg=${SAMPLER_ARG:-}
cargo build --release -q -p mupdate -p loadtest
load=$PWD/target/release/mupdate-load
work=$(mktemp -d)
server_pid=
sink_pid=
cleanup() {
    stop_pid "$server_pid"
    stop_pid "$sink_pid"
    rm -rf "$work"
}
trap cleanup EXIT

pin_cpus
"${client_cpu[@]}" "$load" otlp-sink --stats "$work/sink-stats" > "$work/sink-address" &
sink_pid=$!
for _ in $(seq 1 100); do [ -s "$work/sink-address" ] && break; sleep 0.05; done
sink="http://$(head -n 1 "$work/sink-address")"

cpu_ticks() { # utime + stime of a process, in clock ticks
    awk '{ print $14 + $15 }' "/proc/$1/stat"
}
ticks_per_second=$(getconf CLK_TCK)

start_server() { # mode
    local dir=$work/$1-$round
    write_ours_conf "$dir" mupdate-master "mupdate_http_listen: off"
    local env=(env -u OTEL_EXPORTER_OTLP_ENDPOINT -u OTEL_EXPORTER_OTLP_TRACES_ENDPOINT)
    if [ "$1" = on ]; then
        env+=(OTEL_EXPORTER_OTLP_ENDPOINT="$sink")
        [ -n "$sampler" ] && env+=(OTEL_TRACES_SAMPLER="$sampler")
        [ -n "$sampler_arg" ] && env+=(OTEL_TRACES_SAMPLER_ARG="$sampler_arg")
    fi
    RUST_LOG=warn,mupdate::app=info "${env[@]}" "${server_cpu[@]}" target/release/mupdate -C "$dir/imapd.conf" -m 2> "$dir/log" &
    server_pid=$!
    port=$(ours_port "$dir")
}

stop_server() {
    kill -TERM "$server_pid"
    wait "$server_pid" || true
    server_pid=
}

run() { # mode label count args...
    local mode=$1 label=$2 count=$3; shift 3
    local before after json
    before=$(cpu_ticks "$server_pid")
    json=$("${client_cpu[@]}" "$load" --addr "127.0.0.1:$port" "$@")
    after=$(cpu_ticks "$server_pid")
    local cpu_us
    cpu_us=$(python3 -c "print(round(($after - $before) / $ticks_per_second / $count * 1e6, 2))")
    echo "{\"mode\":\"$mode\",\"round\":$round,\"test\":\"$label\",\"server_cpu_us_per_op\":$cpu_us,\"result\":$json}" \
        | tee -a "$work/results.jsonl" >&2
}

for round in $(seq 1 "$rounds"); do
    for mode in off on; do
        start_server "$mode"
        run "$mode" W1 20000 activate --conns 8 --count 20000 --prefix user.t --start 0
        run "$mode" W2 4000 activate --conns 1 --count 4000 --prefix user.t --start 20000
        run "$mode" F1 150000 find --conns 8 --count 150000 --prefix user.t --existing 24000
        run "$mode" F2 20000 find --conns 1 --count 20000 --prefix user.t --existing 24000
        stop_server
    done
done
echo "sink received: $(cat "$work/sink-stats" 2>/dev/null || echo '0 0') (requests bytes)" >&2
[ -n "$out" ] && cp "$work/results.jsonl" "$out"
python3 - "$work/results.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def median(mode, test, key):
    values = [r["result"][key] if key in r["result"] else r[key]
              for r in rows if r["mode"] == mode and r["test"] == test]
    return statistics.median(values)
names = {"W1": "ACTIVATE/s, 8 connections", "W2": "ACTIVATE/s, 1 connection",
         "F1": "FIND/s, 8 connections", "F2": "FIND/s, 1 connection"}
print("| # | measure | export off | export on | throughput cost | server CPU us/op off | on | CPU cost |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
for test, what in names.items():
    off, on = median("off", test, "ops_per_s"), median("on", test, "ops_per_s")
    coff = median("off", test, "server_cpu_us_per_op")
    con = median("on", test, "server_cpu_us_per_op")
    print(f"| {test} | {what} | {off:,.0f} | {on:,.0f} | {(1 - on / off) * 100:+.1f}% "
          f"| {coff:.1f} | {con:.1f} | {(con / coff - 1) * 100:+.1f}% |")
PY
