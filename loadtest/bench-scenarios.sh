#!/usr/bin/env bash
# The load tool's scenarios against our mupdate and a real Cyrus 3.6.1 mupdate master in
# the same run (same machine, same client, fresh servers for every scenario, both durable
# before each OK), then a table of ratios. Installs nothing: it needs root, Cyrus
# (scripts/install-test-deps.sh) and this repository.
#   loadtest/bench-scenarios.sh [OUTDIR]    (default loadtest/results: JSON, SVG, table)
#   QUICK=1 loadtest/bench-scenarios.sh     (sizes divided by 10, for a try)
#   PIN=1 loadtest/bench-scenarios.sh       (servers on CPU 0, mupdate-load on CPU 1)
# Scenarios (both servers unless marked):
#   S1 burst: 8 writers, 20,000 ACTIVATEs; then 100,000 FINDs over 8
#   S1L the same burst with 100 listeners following (propagation and catch-up under load)
#   S2 burst: 1 writer, 5,000 ACTIVATEs; then 20,000 FINDs over 1
#   S3 steady: 200 writes/s of the mix (1:4:1:1), 2 readers, 100 listeners
#   S4 initial-sync: 100,000 mailboxes, 3 new slaves' syncs; the server's RSS at 100,000
#   S5 restart: 200 listeners (Cyrus is configured for 256 connections), restart, resume
#   S6 slow-listeners: 50 listeners that never read beside 50 that do, 5,000 ACTIVATEs
#   S7 ours: steady, 10 writes/s of the mix, 10,000 listeners (100,000 notices/s)
#   S8 ours: restart with 1,000 listeners
#   S9 ours: initial-sync of 1,000,000 mailboxes
set -euo pipefail
cd "$(dirname "$0")/.."
source loadtest/ours.sh
out=${1:-loadtest/results}
mkdir -p "$out"
out=$(cd "$out" && pwd)
pin_cpus
q=1
[ "${QUICK:-0}" = 1 ] && q=10
bench_setup
# mupdate-load and the server each raise their soft open-file limit to the hard one.
ours_pid=
cyrus_dir=
cleanup() {
    stop_servers
    rm -rf "$work"
}
trap cleanup EXIT

stop_servers() {
    if [ -n "$ours_pid" ]; then
        kill -TERM "$(cat "$work/ours.pid")" 2>/dev/null || true
        while kill -0 "$(cat "$work/ours.pid")" 2>/dev/null; do sleep 0.05; done
        ours_pid=
    fi
    if [ -n "$cyrus_dir" ]; then
        loadtest/cyrus-master.sh stop "$cyrus_dir" || true
        cyrus_dir=
    fi
}

# fresh_servers ID: a new Cyrus master and a new one of ours, each in its own directory;
# sets port_cyrus/pid_cyrus, port_ours/pid_ours and each side's restart command.
fresh_servers() {
    local id=$1
    stop_servers
    cyrus_dir="$work/cyrus-$id"
    port_cyrus=$(free_port)
    pid_cyrus=$("${server_cpu[@]}" loadtest/cyrus-master.sh start "$cyrus_dir" "$port_cyrus")
    restart_cyrus="loadtest/cyrus-master.sh stop $cyrus_dir && ${server_cpu[*]} loadtest/cyrus-master.sh start $cyrus_dir $port_cyrus"
    local dir="$work/ours-$id"
    port_ours=$(free_port)
    write_ours_conf "$dir" mupdate-master "mupdate_http_listen: off" \
        "mupdate_connections_max: 20000" "mupdate_unauthenticated_max: 20000"
    cat > "$dir/start.sh" <<EOF
#!/usr/bin/env bash
# Stops the running instance (if any), starts ours on 127.0.0.1:$port_ours, prints its pid.
if [ -s "$work/ours.pid" ] && kill -TERM "\$(cat "$work/ours.pid")" 2>/dev/null; then
    while kill -0 "\$(cat "$work/ours.pid")" 2>/dev/null; do sleep 0.01; done
fi
: > "$dir/log"
IMAPD_MUPDATE_LISTEN=127.0.0.1:$port_ours RUST_LOG=warn,mupdate::app=info \\
    setsid ${server_cpu[*]} "$bin" -C "$dir/imapd.conf" -m 2>> "$dir/log" > /dev/null < /dev/null &
echo \$! > "$work/ours.pid"
source "$PWD/loadtest/ours.sh"
ours_port "$dir" > /dev/null
cat "$work/ours.pid"
EOF
    chmod +x "$dir/start.sh"
    rm -f "$work/ours.pid"
    pid_ours=$("$dir/start.sh")
    ours_pid=$pid_ours
    restart_ours="$dir/start.sh"
}

# scenario SIDE ID NAME ARGS...: one run of mupdate-load against SIDE's fresh server.
scenario() {
    local side=$1 id=$2 name=$3
    shift 3
    local port pid restart
    if [ "$side" = cyrus ]; then port=$port_cyrus pid=$pid_cyrus restart=$restart_cyrus
    else port=$port_ours pid=$pid_ours restart=$restart_ours; fi
    echo "== $id $side: $name $*" >&2
    "${client_cpu[@]}" "$load" --addr "127.0.0.1:$port" scenario "$name" --pid "$pid" --restart-command "$restart" \
        --prefix "user.$id." --json "$out/$side-$id.json" --svg "$out/$side-$id.svg" "$@" \
        || echo "{\"scenario\":\"$name\",\"failed\":true}" > "$out/$side-$id.json"
}

both() { # ID NAME ARGS...
    local id=$1
    fresh_servers "$id"
    for side in cyrus ours; do scenario "$side" "$@"; done
}
ours_only() { # ID NAME ARGS...
    fresh_servers "$1"
    scenario ours "$@"
}

both S1 burst --writers 8 --writes $((20000 / q)) --listeners 0 --reads $((100000 / q)) --readers 8
both S1L burst --writers 8 --writes $((20000 / q)) --listeners 100 --reads 0
both S2 burst --writers 1 --writes $((5000 / q)) --listeners 0 --reads $((20000 / q)) --readers 1
both S3 steady --listeners 100 --rate 200 --writes $((2000 / q)) --readers 2
both S4 initial-sync --mailboxes $((100000 / q)) --syncs 3
both S5 restart --listeners 200 --writes $((2000 / q)) --writes-after $((2000 / q))
both S6 slow-listeners --listeners 50 --slow-listeners 50 --writes $((5000 / q)) --reads 0
ours_only S7 steady --listeners $((10000 / q)) --rate 10 --writes $((300 / q)) --readers 0
ours_only S8 restart --listeners 1000 --writes $((2000 / q)) --writes-after $((2000 / q))
ours_only S9 initial-sync --mailboxes $((1000000 / q)) --syncs 3
stop_servers

python3 loadtest/scenario-table.py "$out" | tee "$out/table.md"
