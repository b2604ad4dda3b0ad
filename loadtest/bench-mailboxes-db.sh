#!/usr/bin/env bash
# mailboxes.db benchmark (issue 13), ours against a real Cyrus 3.6.1 slave in the same run:
# a new slave's initial sync of COUNT (default 100 000) mailboxes, measured by a Cyrus-style
# reader (`mupdate-load lock-probe`) that read-locks the slave's mailboxes.db in a loop: the
# time until the file holds every record, and the longest any lookup waited for the lock
# meanwhile. Both slaves sync from the same master, twice: a real Cyrus master, then one of
# ours (MASTERS=cyrus or MASTERS=ours runs one of them), ROUNDS (default 3) new slaves of
# each kind per master, alternating, each after the disk has settled (sync); the table has
# medians, and the worst wait of any round. Each master's own time to send its list to a
# client is measured too: no slave can be done sooner. Needs root and Cyrus
# (scripts/install-test-deps.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
source loadtest/ours.sh
count=${COUNT:-100000}
masters=${MASTERS:-cyrus ours}
rounds=${ROUNDS:-3}
bench_setup
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    for d in "$work"/cyrus "$work"/cslave-*; do [ -d "$d" ] && loadtest/cyrus-master.sh stop "$d"; done
    rm -rf "$work"
}
trap cleanup EXIT
say() { echo "{\"master\":\"$1\",\"server\":\"$2\",\"result\":$3}" | tee -a "$work/results.jsonl" >&2; }

# start_master cyrus|ours: a master holding COUNT mailboxes, at host:port $addr.
start_master() {
    local port
    if [ "$1" = cyrus ]; then
        port=$(free_port)
        loadtest/cyrus-master.sh start "$work/cyrus" "$port" > /dev/null
    else
        write_ours_conf "$work/omaster" omaster "mupdate_http_listen: off"
        RUST_LOG=warn,mupdate=info "$bin" -m -C "$work/omaster/imapd.conf" 2> "$work/omaster/log" &
        pids+=($!)
        port=$(ours_port "$work/omaster")
    fi
    addr=127.0.0.1:$port
    "$load" --addr "$addr" activate --conns 8 --count "$count" --prefix user.m > /dev/null
}

# sync_slave MASTER_NAME ADDR cyrus|ours ROUND: a new slave of ADDR, probed until its file
# is full.
sync_slave() {
    local name=$1-$4 addr=$2 kind=$3 probe db
    sync
    sleep 1
    if [ "$kind" = cyrus ]; then
        mkdir -p "$work/cslave-$name/conf"
        db=$work/cslave-$name/conf/mailboxes.db
        "$load" lock-probe --db "$db" --records "$count" > "$work/probe.json" &
        probe=$!
        loadtest/cyrus-master.sh start "$work/cslave-$name" "$(free_port)" "$addr" > /dev/null
        wait "$probe"
        loadtest/cyrus-master.sh stop "$work/cslave-$name"
    else
        write_ours_conf "$work/oslave-$name" oslave "mupdate_server: $addr" \
            "mupdate_authname: mupdate" "mupdate_password: mupdatepass" \
            "mupdate_http_listen: off" "mupdate_mailboxes_db: on"
        db=$work/oslave-$name/mailboxes.db
        "$load" lock-probe --db "$db" --records "$count" > "$work/probe.json" &
        probe=$!
        RUST_LOG=warn,mupdate=info "$bin" -C "$work/oslave-$name/imapd.conf" 2> "$work/oslave-$name/log" &
        local slave=$!
        pids+=("$slave")
        wait "$probe"
        kill -TERM "$slave"
        wait "$slave" || true
        grep -iE "held long|rewritten|reconciled|synchron" "$work/oslave-$name/log" >&2 || true
    fi
    say "$1" "$kind" "$(cat "$work/probe.json")"
}

for master in $masters; do
    start_master "$master"
    dump=$("$load" --addr "$addr" dump)
    say "$master" master "$dump"
    for round in $(seq 1 "$rounds"); do
        sync_slave "$master" "$addr" cyrus "$round"
        sync_slave "$master" "$addr" ours "$round"
    done
done

python3 - "$work/results.jsonl" "$count" <<'PY'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
n = int(sys.argv[2])
for master in dict.fromkeys(r["master"] for r in rows):
    runs = lambda server: [x["result"] for x in rows if x["master"] == master and x["server"] == server]
    c, o, m = runs("cyrus"), runs("ours"), runs("master")[0]
    med = lambda rs, k: statistics.median(r[k] for r in rs)
    spread = lambda rs: " / ".join(f"{r['seconds']:.2f}" for r in rs)
    who = "a Cyrus 3.6.1 master" if master == "cyrus" else "our master"
    print(f"\nBoth slaves following {who} ({len(c)} rounds each):\n")
    print(f"| measure ({n:,} mailboxes) | Cyrus 3.6.1 slave | ours | ratio |")
    print("| --- | --- | --- | --- |")
    print(f"| start -> mailboxes.db holds all, median (s) | {med(c, 'seconds'):.3f} | {med(o, 'seconds'):.3f} | {med(c, 'seconds')/max(med(o, 'seconds'), 1e-3):.1f}x |")
    print(f"| each round (s) | {spread(c)} | {spread(o)} | |")
    print(f"| longest lookup wait for the lock, any round (ms) | {max(r['wait_max_ms'] for r in c):.1f} | {max(r['wait_max_ms'] for r in o):.1f} | |")
    print(f"| p99 lookup wait, median (ms) | {med(c, 'wait_p99_ms'):.2f} | {med(o, 'wait_p99_ms'):.2f} | |")
    print(f"| lookups made meanwhile, median | {med(c, 'probes'):.0f} | {med(o, 'probes'):.0f} | |")
    print(f"| the master sends its list to a plain client (s) | {m['dump_seconds']:.3f} | {m['dump_seconds']:.3f} | |")
PY
