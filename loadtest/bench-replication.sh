#!/usr/bin/env bash
# Replication benchmarks, ours against a real Cyrus 3.6.1 in the same run (issue 4):
#   R1 slave catch-up: 20 000 ACTIVATEs on the master (8 connections) with a slave attached;
#      time from the master's last OK until the slave answers FIND for the last mailbox
#   R2 fan-out: 100 PARTIAL-UPDATE listeners; writer OK -> each listener, 5 rounds
#   R3 a new slave's initial sync of 100 000 mailboxes: start -> FIND of the last answers
#   R4 (ours only; Cyrus's default serves about 50) 1 000 listeners: latency and RSS
# Needs root and Cyrus (scripts/install-test-deps.sh); installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
source loadtest/ours.sh
bench_setup
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    for d in cyrus cslave cslave2; do loadtest/cyrus-master.sh stop "$work/$d" || true; done
    rm -rf "$work"
}
trap cleanup EXIT
ulimit -n 8192
now() { date +%s.%N; }

# ours: start_ours NAME [MASTERPORT] -> sets port_NAME, pid in pids
start_ours() {
    local name=$1 upstream=${2:-} dir="$work/$1"
    local lines=("mupdate_connections_max: 2000" "mupdate_http_listen: 127.0.0.1:0")
    if [ -n "$upstream" ]; then
        lines+=("mupdate_server: 127.0.0.1:$upstream" "mupdate_authname: mupdate"
            "mupdate_password: mupdatepass")
    fi
    write_ours_conf "$dir" "$name" "${lines[@]}"
    local mode=-m
    [ -n "$upstream" ] && mode=
    RUST_LOG=warn,mupdate::app=info "$bin" -C "$dir/imapd.conf" $mode 2> "$dir/log" &
    pids+=($!)
    eval "pid_$name=$!"
}
port_of() { # wait (5 minutes at most: a slave greets after its first sync) for NAME's port
    ours_port "$work/$1" 6000
}
say() { echo "{\"server\":\"$1\",\"test\":\"$2\",\"result\":$3}" | tee -a "$work/results.jsonl" >&2; }

# --- Cyrus
cport=$(free_port); loadtest/cyrus-master.sh start "$work/cyrus" "$cport" > /dev/null
csport=$(free_port); loadtest/cyrus-master.sh start "$work/cslave" "$csport" "127.0.0.1:$cport" > /dev/null
say cyrus R1 "$("$load" --addr "127.0.0.1:$cport" catchup --slave "127.0.0.1:$csport" --count 20000 --prefix user.c | tail -n 1)"
say cyrus R2 "$("$load" --addr "127.0.0.1:$cport" fanout --listeners 100 --rounds 5)"
"$load" --addr "127.0.0.1:$cport" activate --conns 8 --count 80000 --start 20000 --prefix user.c > /dev/null
cs2port=$(free_port)
t0=$(now)
loadtest/cyrus-master.sh start "$work/cslave2" "$cs2port" "127.0.0.1:$cport" > /dev/null
"$load" --addr "127.0.0.1:$cs2port" wait-for --name user.c000099999 > /dev/null
say cyrus R3 "{\"sync_seconds\":$(python3 -c "print(round($(now)-$t0,3))")}"

# --- ours
start_ours master; oport=$(port_of master)
start_ours slave "$oport"; sport=$(port_of slave)
say ours R1 "$("$load" --addr "127.0.0.1:$oport" catchup --slave "127.0.0.1:$sport" --count 20000 --prefix user.c | tail -n 1)"
say ours R2 "$("$load" --addr "127.0.0.1:$oport" fanout --listeners 100 --rounds 5)"
"$load" --addr "127.0.0.1:$oport" activate --conns 8 --count 80000 --start 20000 --prefix user.c > /dev/null
t0=$(now)
start_ours slave2 "$oport"; s2port=$(port_of slave2)
"$load" --addr "127.0.0.1:$s2port" wait-for --name user.c000099999 > /dev/null
say ours R3 "{\"sync_seconds\":$(python3 -c "print(round($(now)-$t0,3))")}"
say ours R4 "$("$load" --addr "127.0.0.1:$oport" fanout --listeners 1000 --rounds 3 --pid "$pid_master")"

python3 - "$work/results.jsonl" <<'PY'
import json, sys
r = {(x["server"], x["test"]): x["result"] for x in map(json.loads, open(sys.argv[1]))}
c, o = lambda t: r[("cyrus", t)], lambda t: r[("ours", t)]
print("| # | measure | Cyrus 3.6.1 | ours | ratio |")
print("| --- | --- | --- | --- | --- |")
print(f"| R1 | slave catch-up after 20,000 writes (s) | {c('R1')['catchup_seconds']:.3f} | {o('R1')['catchup_seconds']:.3f} | {c('R1')['catchup_seconds']/max(o('R1')['catchup_seconds'],1e-4):.0f}x |")
print(f"| R2 | fan-out, writer OK -> last of 100 listeners, per round (ms) | {c('R2')['last_listener_ms']} | {o('R2')['last_listener_ms']} | |")
print(f"| R2 | same, from the writer's send (ms) | {c('R2')['last_listener_since_send_ms']} | {o('R2')['last_listener_since_send_ms']} | |")
print(f"| R3 | new slave's initial sync of 100,000 (s) | {c('R3')['sync_seconds']:.3f} | {o('R3')['sync_seconds']:.3f} | {c('R3')['sync_seconds']/o('R3')['sync_seconds']:.1f}x |")
x = o('R4')
print(f"| R4 | 1,000 listeners: p99 / last per round (ms); RSS before -> with (KiB) | - | p99 {x['p99_ms']}, last {x['last_listener_ms']}; {x['rss_kib_before']} -> {x['rss_kib_with_listeners']} | |")
PY
