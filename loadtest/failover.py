#!/usr/bin/env python3
"""Issue 16's benchmarks on a three-instance elected cluster of ours on a real etcd.

  writes   durable ACTIVATE through mupdate-load on the elected master (and through a
           follower, which forwards), with the cluster's mupdate_sync_replicas
  rounds   failover time: a writer ACTIVATEs through a follower without pause; the master
           is SIGKILLed; the longest pause between acknowledged writes from the kill until
           a write is acknowledged under the successor, over many rounds (the killed
           instance restarts and rejoins between rounds)

Prints one JSON object per measure on stdout. Everything it starts it stops by pid; its
directory is removed at the end. Usage:
  failover.py --bin BIN --load LOAD --work DIR --sync N --lease S (writes|rounds N)
"""

import argparse
import base64
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    def __init__(self, args):
        self.args = args
        self.work = args.work
        self.procs = {}
        self.etcd = None
        client, peer = free_port(), free_port()
        self.endpoint = f"127.0.0.1:{client}"
        os.makedirs(f"{self.work}/etcd", exist_ok=True)
        self.etcd = subprocess.Popen(
            ["etcd", "--name=bench", f"--data-dir={self.work}/etcd/data",
             f"--listen-client-urls=http://{self.endpoint}",
             f"--advertise-client-urls=http://{self.endpoint}",
             f"--listen-peer-urls=http://127.0.0.1:{peer}",
             f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
             f"--initial-cluster=bench=http://127.0.0.1:{peer}"],
            stdout=subprocess.DEVNULL, stderr=open(f"{self.work}/etcd/log", "w"))
        self.ports = [free_port() for _ in range(args.instances)]
        for i, port in enumerate(self.ports):
            d = f"{self.work}/m{i}"
            os.makedirs(d, exist_ok=True)
            with open(f"{d}/passwd", "w") as f:
                f.write("mupdate:{PLAIN}mupdatepass\n")
            with open(f"{d}/imapd.conf", "w") as f:
                f.write(
                    f"configdirectory: {d}\nservername: m{i}\nadmins: mupdate\n"
                    f"allowplaintext: yes\nfailedloginpause: 0\nmupdate_passwd_file: {d}/passwd\n"
                    f"mupdate_listen: 127.0.0.1:{port}\nmupdate_http_listen: 127.0.0.1:0\nmupdate_connections_max: 256\n"
                    f"mupdate_authname: mupdate\nmupdate_password: mupdatepass\n"
                    f"mupdate_retry_delay: 1\nmupdate_shutdown_delay: 0\n"
                    f"mupdate_ha_etcd_endpoints: {self.endpoint}\nmupdate_ha_cluster: bench\n"
                    f"mupdate_ha_advertise: 127.0.0.1:{port}\n"
                    f"mupdate_ha_lease_ttl: {args.lease}\nmupdate_sync_replicas: {args.sync}\n")
        wait_until(lambda: connects(self.endpoint), 20, "etcd")
        for i in range(args.instances):
            self.start(i)

    def start(self, i):
        d = f"{self.work}/m{i}"
        env = dict(os.environ, RUST_LOG="warn,mupdate::app=info,mupdate::replication::slave=info")
        self.procs[i] = subprocess.Popen(
            [self.args.bin, "-C", f"{d}/imapd.conf"], env=env,
            stdout=subprocess.DEVNULL, stderr=open(f"{d}/log", "a"))

    def log(self, i):
        with open(f"{self.work}/m{i}/log", errors="replace") as f:
            return f.read()

    def address(self, i):
        return f"127.0.0.1:{self.ports[i]}"

    def banners(self):
        return [banner(self.address(i)) if i in self.procs else None for i in range(len(self.ports))]

    def master(self, patience=30, among=None):
        """The index of the one instance whose banner says (master) while the others
        name it, and the writes it takes are confirmed (its sync replica recorded)."""
        def settled():
            b = [x if among is None or i in among else None for i, x in enumerate(self.banners())]
            masters = [i for i in range(len(b)) if b[i] and '"(master)"' in b[i]]
            if len(masters) != 1:
                return None
            named = f'"mupdate://{self.address(masters[0])}"'
            if all(i == masters[0] or b[i] is None or named in b[i] for i in range(len(b))):
                return masters[0]
            return None
        return wait_until(settled, patience, "a master")

    def kill(self, i):
        p = self.procs.pop(i)
        p.send_signal(signal.SIGKILL)
        p.wait()

    def stop(self):
        for p in self.procs.values():
            p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs = {}
        if self.etcd:
            self.etcd.terminate()
            self.etcd.wait()


def wait_until(check, patience, what):
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        value = check()
        if value is not None and value is not False:
            return value
        time.sleep(0.02)
    raise SystemExit(f"no {what} within {patience} s")


def connects(address):
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=0.5):
            return True
    except OSError:
        return False


def banner(address):
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=1) as s:
            s.settimeout(1)
            data = b""
            while b"* OK" not in data or not data.split(b"* OK", 1)[1].count(b"\r\n"):
                chunk = s.recv(4096)
                if not chunk:
                    return None
                data += chunk
            return data.decode(errors="replace")
    except OSError:
        return None


class Writer:
    """ACTIVATEs new mailboxes through one address without pause, noting when each was
    acknowledged; reconnects after any failure."""

    def __init__(self, address, prefix):
        self.address, self.prefix = address, prefix
        self.acks = []
        self.stopping = False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def session(self):
        host, port = self.address.rsplit(":", 1)
        s = socket.create_connection((host, int(port)), timeout=2)
        s.settimeout(15)
        f = s.makefile("rb")
        while not f.readline().startswith(b"* OK"):
            pass
        token = base64.b64encode(b"\0mupdate\0mupdatepass").decode()
        s.sendall(f'A AUTHENTICATE "PLAIN" "{token}"\r\n'.encode())
        if not f.readline().startswith(b"A OK"):
            raise OSError("login refused")
        return s, f

    def run(self):
        n = 0
        while not self.stopping:
            try:
                s, f = self.session()
                with s:
                    while not self.stopping:
                        n += 1
                        name = f"{self.prefix}{n}"
                        s.sendall(f'W ACTIVATE "{name}" "be!p" "anyone\tlr\t"\r\n'.encode())
                        line = f.readline()
                        if not line:
                            raise OSError("closed")
                        if line.startswith(b"W OK"):
                            self.acks.append(time.monotonic())
                        else:
                            time.sleep(0.01)
            except OSError:
                time.sleep(0.02)

    def stop(self):
        self.stopping = True
        self.thread.join(timeout=20)


def run_load(args, address, label, start):
    out = subprocess.run(
        [args.load, "--addr", address, "activate", "--conns", "8", "--count", "20000",
         "--prefix", "user.s", "--start", str(start)],
        check=True, capture_output=True, text=True).stdout
    print(json.dumps({"server": f"ours-ha-sync{args.sync}", "test": label, "instances": args.instances,
                      "result": json.loads(out)}), flush=True)


def writes(args, cluster):
    master = cluster.master()
    follower = next(i for i in range(len(cluster.ports)) if i != master)
    time.sleep(1)  # the synchronous replica recorded
    run_load(args, cluster.address(master), "master", 0)
    run_load(args, cluster.address(follower), "follower", 20000)


def rounds(args, cluster, count):
    gaps, resyncs = [], {"delta": 0, "full": 0}
    for r in range(count):
        master = cluster.master()
        follower = next(i for i in range(len(cluster.ports)) if i != master)
        writer = Writer(cluster.address(follower), f"user.r{r}.")
        wait_until(lambda: len(writer.acks) >= 50, 30, "writes before the kill")
        killed_at = time.monotonic()
        cluster.kill(master)
        # A write the old master acknowledged just before dying may arrive just after:
        # the gap is the longest pause between acknowledgements from the kill to a write
        # acknowledged once a successor is in office.
        survivors = [i for i in range(len(cluster.ports)) if i != master]
        cluster.master(among=survivors)
        elected_at = time.monotonic()
        wait_until(lambda: writer.acks[-1] > elected_at, 60, "a write after the failover")
        writer.stop()
        acks = writer.acks
        gaps.append(max(b - a for a, b in zip(acks, acks[1:]) if b > killed_at))
        synced_before = cluster.log(master).count("synchronization complete")
        cluster.start(master)
        wait_until(lambda: cluster.log(master).count("synchronization complete") > synced_before,
                   60, "the killed instance's resync")
        last = [l for l in cluster.log(master).splitlines() if "synchronization complete" in l][-1]
        resyncs["delta" if "delta resync" in last else "full"] += 1
        print(f"round {r + 1}: {gaps[-1]:.3f} s", file=sys.stderr, flush=True)
    gaps.sort()
    print(json.dumps({"server": f"ours-ha-sync{args.sync}", "test": "failover", "result": {
        "rounds": count, "lease_s": args.lease,
        "min_s": gaps[0], "median_s": statistics.median(gaps),
        "p90_s": gaps[int(0.9 * (count - 1))], "max_s": gaps[-1],
        "rejoined_delta": resyncs["delta"], "rejoined_full": resyncs["full"]}}), flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin", required=True)
    p.add_argument("--load", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--sync", type=int, default=1)
    p.add_argument("--lease", type=int, default=3)
    p.add_argument("--instances", type=int, default=3)
    p.add_argument("mode", choices=["writes", "rounds"])
    p.add_argument("count", type=int, nargs="?", default=20)
    args = p.parse_args()
    cluster = Cluster(args)
    try:
        if args.mode == "writes":
            writes(args, cluster)
        else:
            rounds(args, cluster, args.count)
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
