# Sourced by the bench scripts: our mupdate in a scratch directory, set up as every
# benchmark needs it (PLAIN over loopback, no failed-login pause, ports from the OS).

# write_ours_conf DIR NAME [LINE...]: DIR/imapd.conf (with the extra LINEs) and DIR/passwd.
write_ours_conf() {
    local dir=$1 name=$2
    shift 2
    mkdir -p "$dir"
    printf 'mupdate:{PLAIN}mupdatepass\n' > "$dir/passwd"
    {
        echo "configdirectory: $dir"
        echo "servername: $name"
        echo "admins: mupdate"
        echo "allowplaintext: yes"
        echo "failedloginpause: 0"
        echo "mupdate_passwd_file: $dir/passwd"
        echo "mupdate_listen: 127.0.0.1:0"
        for line in "$@"; do echo "$line"; done
    } > "$dir/imapd.conf"
}

# pin_cpus: with PIN=1, server_cpu and client_cpu become taskset prefixes for CPU 0 and 1
# (servers on one, clients on the other); otherwise empty, and the kernel places them.
pin_cpus() {
    server_cpu=()
    client_cpu=()
    if [ "${PIN:-0}" = 1 ]; then
        server_cpu=(taskset -c 0)
        client_cpu=(taskset -c 1)
    fi
}

# ours_port DIR [TRIES]: the port DIR/log says the server listens on, polled every 50 ms
# (TRIES times, default 200); prints the log and fails if it never does.
ours_port() {
    local dir=$1 tries=${2:-200} port=
    for _ in $(seq 1 "$tries"); do
        port=$(grep -o 'listening on 127.0.0.1:[0-9]*' "$dir/log" | head -n 1 | cut -d: -f2 || true)
        [ -n "$port" ] && { echo "$port"; return 0; }
        sleep 0.05
    done
    cat "$dir/log" >&2
    return 1
}

# bench_setup: builds ours and the load client (release), and sets load (the client), bin
# (our server, or MUPDATE_BIN: another build, e.g. an older commit's, to compare) and work (a
# scratch directory, readable by Cyrus's user).
bench_setup() {
    cargo build --release -q -p mupdate -p loadtest
    load=$PWD/target/release/mupdate-load
    bin=${MUPDATE_BIN:-$PWD/target/release/mupdate}
    work=$(mktemp -d)
    chmod 755 "$work"
}

# stop_pid PID: stops a process this script started (TERM, then waits for it), if any;
# never fails, so that a cleanup trap under `set -e` runs to its end.
stop_pid() {
    [ -n "${1:-}" ] || return 0
    kill -TERM "$1" 2>/dev/null || return 0
    wait "$1" 2>/dev/null || true
}

# free_port: a TCP port free on 127.0.0.1 now.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# cleanup_ours_and_cyrus: the EXIT trap of a benchmark of ours ($ours_pid, if any) beside
# one Cyrus master ($work/cyrus): stops both, removes $work.
cleanup_ours_and_cyrus() {
    stop_pid "${ours_pid:-}"
    loadtest/cyrus-master.sh stop "$work/cyrus" || true
    rm -rf "$work"
}
