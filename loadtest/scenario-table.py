#!/usr/bin/env python3
"""Prints the markdown table of loadtest/bench-scenarios.sh from its JSON results
(`<side>-<id>.json` in the directory given): ours against Cyrus, the ratio, and the
issue's target where there is one."""
import json
import pathlib
import sys

out = pathlib.Path(sys.argv[1])


def result(side, sid):
    path = out / f"{side}-{sid}.json"
    if not path.exists():
        return None
    r = json.loads(path.read_text())
    return None if r.get("failed") else r


def get(r, *path):
    for key in path:
        if r is None:
            return None
        r = r.get(key) if isinstance(r, dict) else None
    return r


def fmt(v):
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float) and v < 100:
        return f"{v:,.3f}".rstrip("0").rstrip(".")
    if isinstance(v, (int, float)):
        return f"{v:,.0f}"
    return str(v)


def ratio(c, o, higher_better):
    if not isinstance(c, (int, float)) or not isinstance(o, (int, float)) or isinstance(c, bool):
        return ""
    if higher_better:
        return f"{o / c:.1f}x" if c else ""
    if o == 0:
        return "∞" if c else ""
    return f"{c / o:.1f}x"


ROWS = [
    # id, measure, path, higher is better, target
    ("S1", "durable ACTIVATE/s, 8 writers", ("writes", "writes_per_s"), True, "≥ 10x"),
    ("S1L", "durable ACTIVATE/s, 8 writers, 100 listeners following", ("writes", "writes_per_s"), True, ""),
    ("S2", "durable ACTIVATE/s, 1 writer", ("writes", "writes_per_s"), True, "≥ 2x"),
    ("S1", "ACTIVATE p99 ms, 8 writers", ("writes", "latency", "ACTIVATE", "p99_ms"), False, ""),
    ("S1", "FIND/s, 8 connections", ("reads", "reads_per_s"), True, "≥ 100,000/s"),
    ("S1", "server CPU µs per FIND, 8 connections", ("reads", "server_cpu_us_per_read"), False, "≤ 5 µs"),
    ("S2", "FIND/s, 1 connection", ("reads", "reads_per_s"), True, ""),
    ("S1L", "last change to last of 100 listeners after 20,000 writes (ms)", ("writes", "catchup", "last_write_ok_to_last_listener_ms"), False, "< 500 ms"),
    ("S1L", "propagation writer OK → listener p99 ms, burst, 100 listeners", ("writes", "propagation", "writer_ok_to_listener", "p99_ms"), False, ""),
    ("S3", "propagation writer OK → listener p99 ms, steady 200/s, 100 listeners", ("writes", "propagation", "writer_ok_to_listener", "p99_ms"), False, "< 10 ms"),
    ("S3", "every listener has every change", ("writes", "catchup", "complete"), None, ""),
    ("S1L", "server KiB per streaming listener", ("listeners", "kib_per_listener"), False, "≤ 20 KiB"),
    ("S4", "initial sync of 100,000 mailboxes (s, median of 3)", ("initial_sync", "median_seconds"), False, "≤ 0.05 s"),
    ("S4", "server RSS at 100,000 mailboxes (KiB)", ("server", "rss_kib_end"), False, "≤ 34 MB"),
    ("S5", "restart, 200 listeners: all streaming again (s)", ("restart", "all_resumed_seconds"), False, ""),
    ("S5", "restart, 200 listeners: resumed by delta / in full", None, None, "none re-dumped"),
    ("S6", "ACTIVATE/s beside 50 listeners that never read", ("writes", "writes_per_s"), True, ""),
    ("S6", "propagation p99 ms to the 50 that read", ("writes", "propagation", "writer_ok_to_listener", "p99_ms"), False, ""),
    ("S6", "server peak RSS with the 50 that never read (KiB)", ("server", "rss_kib_peak"), False, ""),
    ("S7", "10,000 listeners, steady 10 writes/s: propagation p99 ms", ("writes", "propagation", "writer_ok_to_listener", "p99_ms"), False, "< 100 ms"),
    ("S7", "10,000 listeners: server CPU µs per write (10,000 notices)", ("writes", "server_cpu_us_per_write"), False, ""),
    ("S7", "10,000 listeners: every listener has every change", ("writes", "catchup", "complete"), None, ""),
    ("S7", "server KiB per streaming listener (10,000)", ("listeners", "kib_per_listener"), False, "≤ 20 KiB"),
    ("S8", "restart, 1,000 listeners: all streaming again (s)", ("restart", "all_resumed_seconds"), False, ""),
    ("S8", "restart, 1,000 listeners: resumed by delta / in full", None, None, "none re-dumped"),
    ("S9", "initial sync of 1,000,000 mailboxes (s, median of 3)", ("initial_sync", "median_seconds"), False, "< 1 s"),
]

print("| # | measure | Cyrus 3.6.1 | ours | ours vs Cyrus | target |")
print("| --- | --- | --- | --- | --- | --- |")
for sid, measure, path, higher, target in ROWS:
    c, o = result("cyrus", sid), result("ours", sid)
    if path is None:
        cv = c and f"{get(c, 'restart', 'delta_resumes')} / {get(c, 'restart', 'full_resumes')}"
        ov = o and f"{get(o, 'restart', 'delta_resumes')} / {get(o, 'restart', 'full_resumes')}"
        print(f"| {sid} | {measure} | {fmt(cv)} | {fmt(ov)} | | {target} |")
        continue
    cv, ov = get(c, *path), get(o, *path)
    r = "" if higher is None else ratio(cv, ov, higher)
    print(f"| {sid} | {measure} | {fmt(cv)} | {fmt(ov)} | {r} | {target} |")
