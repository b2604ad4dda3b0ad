#!/usr/bin/env bash
# Idle connections (issue 6): our master holds CONNECTIONS (default 10 000) logged-in
# connections that send nothing; the server's RSS is taken before and with them, and fresh
# clients are timed from connect through banner, login and a FIND meanwhile.
# Needs an open-file limit above CONNECTIONS for this shell (ulimit -n); the server raises
# its own soft limit to the hard one. Usage: [CONNECTIONS=10000] loadtest/bench-idle.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source loadtest/ours.sh
connections=${CONNECTIONS:-10000}
ulimit -n "$(ulimit -Hn)"
[ "$(ulimit -n)" -gt $((connections + 100)) ] || {
    echo "open-file limit $(ulimit -n) is too low for $connections connections" >&2
    exit 1
}
cargo build --release -q -p mupdate -p loadtest
work=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; rm -rf "$work"' EXIT
write_ours_conf "$work/ours" mupdate-master "mupdate_http_listen: off" \
    "mupdate_connections_max: $((connections + 1000))" "mupdate_unauthenticated_max: 1000"
RUST_LOG=warn,mupdate::app=info target/release/mupdate -C "$work/ours/imapd.conf" -m 2> "$work/ours/log" &
pid=$!
port=$(ours_port "$work/ours")
target/release/mupdate-load --addr "127.0.0.1:$port" idle --connections "$connections" --pid "$pid"
