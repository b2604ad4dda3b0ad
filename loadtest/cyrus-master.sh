#!/usr/bin/env bash
# Runs a real Cyrus 3.6.1 mupdate master (Debian's cyrus-murder) under Cyrus master(8),
# from a private directory on 127.0.0.1, for side-by-side benchmarks.
#   cyrus-master.sh start DIR PORT [MASTER]  -> prints the pid of Cyrus's mupdate process
#                                               (with MASTER host:port: a slave of it)
#   cyrus-master.sh stop DIR
# Needs root (master(8) drops to user cyrus) and scripts/install-test-deps.sh.
set -euo pipefail
CYRUS_BIN=/usr/lib/cyrus/bin
cmd=${1:?usage: cyrus-master.sh start DIR PORT | stop DIR}
dir=${2:?directory}

stop() {
    [ -s "$dir/master.pid" ] || return 0
    local pid kids
    pid=$(cat "$dir/master.pid")
    kids=$(ps -o pid= --ppid "$pid" 2>/dev/null | tr -d ' ' || true)
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
        local alive=0
        for p in $pid $kids; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for p in $pid $kids; do kill -KILL "$p" 2>/dev/null || true; done
    rm -f "$dir/master.pid"
}

if [ "$cmd" = stop ]; then
    stop
    exit 0
fi

port=${3:?port}
upstream=${4:-}
mode="-m"
slave_conf=""
if [ -n "$upstream" ]; then
    mode=""
    slave_conf="mupdate_server: $upstream
mupdate_authname: mupdate
mupdate_password: mupdatepass
mupdate_retry_delay: 20"
fi
[ -x "$CYRUS_BIN/master" ] || { echo "Cyrus not installed: run scripts/install-test-deps.sh" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "cyrus-master.sh needs root" >&2; exit 1; }
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
mkdir -p "$dir/conf/socket" "$dir/conf/proc" "$dir/conf/lock" "$dir/conf/log" "$dir/spool"
cat > "$dir/imapd.conf" <<CONF
configdirectory: $dir/conf
proc_path: $dir/conf/proc
mboxname_lockpath: $dir/conf/lock
defaultpartition: default
partition-default: $dir/spool
servername: mupdate-master
admins: mupdate
mboxlist_db: twoskip
allowplaintext: yes
sasl_pwcheck_method: auxprop
sasl_auxprop_plugin: sasldb
sasl_sasldb_path: $dir/sasldb2
sasl_mech_list: PLAIN
sasl_auto_transition: no
failedloginpause: 0
mupdate_connections_max: 256
mupdate_workers_max: 256
$slave_conf
CONF
cat > "$dir/cyrus.conf" <<CONF
START {
}
SERVICES {
  mupdate cmd="mupdate -C $dir/imapd.conf $mode" listen="127.0.0.1:$port" prefork=1
}
EVENTS {
}
CONF
rm -f "$dir/sasldb2"
echo mupdatepass | saslpasswd2 -p -c -f "$dir/sasldb2" -u mupdate-master mupdate
chown -R cyrus "$dir"
chmod 0640 "$dir/sasldb2"
"$CYRUS_BIN/master" -d -C "$dir/imapd.conf" -M "$dir/cyrus.conf" -p "$dir/master.pid" -L "$dir/master.log"
for _ in $(seq 1 3000); do
    if [ -s "$dir/master.pid" ] && python3 - "$port" <<'PY' 2>/dev/null
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2)
s.settimeout(5)
data = b""
while b"* OK MUPDATE" not in data:
    chunk = s.recv(4096)
    if not chunk:
        sys.exit(1)
    data += chunk
s.sendall(b"X LOGOUT\r\n")
PY
    then
        ps -o pid= --ppid "$(cat "$dir/master.pid")" | tr -d ' ' | head -n 1
        exit 0
    fi
    sleep 0.1
done
echo "Cyrus mupdate did not answer on 127.0.0.1:$port; see $dir/master.log" >&2
stop
exit 1
