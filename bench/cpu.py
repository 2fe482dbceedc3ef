#!/usr/bin/env python3
"""CPU time of each process group of a local stack, for CPU per command.

    cpu.py snap VAR DSN > a.json          # one snapshot
    cpu.py diff a.json b.json COMMANDS    # microseconds per command of each group, as JSON

Groups: each Tally process (tally-command-api, tally-query-api, tally-worker,
from VAR/run/<name>.pid), the broker ("kafka": every VAR/run/kafka*.pid), and
PostgreSQL split by session: "pg:<application_name>" for client backends
(Tally names its sessions: tally-command-api, tally-query-api,
tally-worker/<role>, tallyctl; common/pg.c), "pg:server" for the postmaster
and its background processes (WAL writer, checkpointer, autovacuum, ...),
"pg:other" for sessions with no name (psql probes). A process's time is
utime + stime of all its threads (/proc/<pid>/stat). A process that started
between the snapshots counts from zero; one that ended is lost (short psql
sessions only: every Tally session lives for the run).
"""
import glob
import json
import os
import subprocess
import sys

HZ = os.sysconf("SC_CLK_TCK")
SERVICES = ("tally-command-api", "tally-query-api", "tally-worker")


def ticks(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return None
    rest = s[s.rindex(")") + 2:].split()
    # fields after comm: state(3) ppid(4) ... utime(14) stime(15), 1-based in proc(5)
    return int(rest[11]) + int(rest[12]), int(rest[1])


def read_pid(path):
    try:
        return int(open(path).read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def pg_names(dsn):
    """pid -> group of every PostgreSQL process the server lists."""
    out = subprocess.run(
        ["psql", dsn, "-qAtX", "-F", "\t", "-c",
         "SELECT pid, coalesce(application_name, ''), coalesce(backend_type, '') FROM pg_stat_activity"],
        capture_output=True, text=True, env=dict(os.environ, PGOPTIONS="-c client_min_messages=warning"))
    names = {}
    for line in out.stdout.splitlines():
        parts = line.split("\t")
        if len(parts) != 3:
            continue
        pid, app, kind = parts
        if kind == "client backend":
            names[int(pid)] = "pg:" + app if app and app != "psql" else "pg:other"
        else:
            names[int(pid)] = "pg:server"
    return names


def snap(var, dsn):
    procs = {}
    for s in SERVICES:
        pid = read_pid(f"{var}/run/{s}.pid")
        if pid:
            procs[pid] = s
    for f in glob.glob(f"{var}/run/kafka*.pid"):
        pid = read_pid(f)
        if pid:
            procs[pid] = "kafka"
    pm = read_pid(f"{var}/pg/data/postmaster.pid")
    if pm:
        procs[pm] = "pg:server"
        names = pg_names(dsn)
        for d in os.listdir("/proc"):
            if d.isdigit():
                t = ticks(d)
                if t and t[1] == pm:
                    procs[int(d)] = names.get(int(d), "pg:server")
    out = {}
    for pid, group in procs.items():
        t = ticks(pid)
        if t:
            out[str(pid)] = [group, t[0]]
    return out


def diff(a, b, commands):
    groups = {}
    for pid, (group, t1) in b.items():
        t0 = a.get(pid, [group, 0])[1]
        groups[group] = groups.get(group, 0) + max(t1 - t0, 0)
    per = {g: round(v * 1e6 / HZ / commands, 1) for g, v in sorted(groups.items())}
    return per


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "snap":
        json.dump(snap(sys.argv[2], sys.argv[3]), sys.stdout)
    elif len(sys.argv) == 5 and sys.argv[1] == "diff":
        a, b = (json.load(open(p)) for p in sys.argv[2:4])
        n = float(sys.argv[4])
        json.dump(diff(a, b, n) if n > 0 else {}, sys.stdout)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
