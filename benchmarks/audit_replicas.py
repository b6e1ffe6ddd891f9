"""What does one audit log across an organization's replicas cost (issue 28)? In one run,
on a throwaway PostgreSQL server on loopback (consortium/launch/pgcluster.py: initdb in
a temp dir, a random port) and, as the baseline, an SQLite file in a temp dir:

  1. one append (`SqliteAuditLog.sent` of a realistic hop, committed before it returns),
     one thread: SQLite (`durable_against = "crash"`, the default) and PostgreSQL (one
     replica; the server's default `synchronous_commit = on`, a WAL flush per commit);
  2. appends/s on PostgreSQL with 6 threads on one replica, and with 3 replicas of 2
     threads each (a Storage per replica, as separate processes would have): every
     append takes the log's advisory lock until its commit, so the database orders them
     one at a time whatever the replicas: the figure is the log's ceiling, the commit's
     flush inside the lock being most of it;
  3. after the concurrent appends: the positions are 0..N-1 (checked, not timed).

Prints one JSON object. Latencies in microseconds (us).

    .venv/bin/python benchmarks/audit_replicas.py [--appends 2000] [--concurrent 3000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from sqlalchemy import select

from consortium.launch.pgcluster import PgCluster
from consortium.storage import migrations
from consortium.storage.storage import PoolSettings, Storage
from consortium.storage.url import parse_location
from consortium.trust.audit import Hop
from consortium.trust.audit.log import ENTRIES, SqliteAuditLog
from consortium.trust.keys import generate_key

KEY = generate_key()


def hop(i: int) -> Hop:
    return Hop(
        kind="request",
        peer="globex",
        message_id=f"m-{i}",
        kid="k",
        digest="d" * 43,
        jws="h" * 100 + ".." + "s" * 86,
        task_id="t",
    )


def open_log(storage: Storage) -> SqliteAuditLog:
    return SqliteAuditLog(
        storage.database("audit"), federation_id="bench", org_id="acme", key=lambda: KEY
    )


def latency(log: SqliteAuditLog, n: int, first: int) -> dict[str, float]:
    times = []
    for i in range(first, first + n):
        h = hop(i)
        t = time.perf_counter()
        log.sent(h)
        times.append(time.perf_counter() - t)
    times.sort()
    return {
        "n": n,
        "p50_us": round(times[n // 2] * 1e6, 1),
        "p99_us": round(times[min(n - 1, int(n * 0.99))] * 1e6, 1),
        "mean_us": round(statistics.mean(times) * 1e6, 1),
    }


def concurrent(logs: list[SqliteAuditLog], threads: int, total: int, first: int) -> float:
    """Appends/s of `threads` threads per log started together, `total` appends in all."""
    each = total // (len(logs) * threads)
    start = threading.Barrier(len(logs) * threads + 1)

    def work(log: SqliteAuditLog, base: int) -> None:
        start.wait()
        for i in range(each):
            log.sent(hop(base + i))

    workers = [
        threading.Thread(target=work, args=(log, first + (r * threads + t) * each))
        for r, log in enumerate(logs)
        for t in range(threads)
    ]
    for w in workers:
        w.start()
    start.wait()
    t = time.perf_counter()
    for w in workers:
        w.join()
    return each * len(workers) / (time.perf_counter() - t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--appends", type=int, default=2000, help="single-thread appends")
    parser.add_argument("--concurrent", type=int, default=3000, help="appends per concurrent run")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="consortium-bench-") as tmp:
        sqlite = Storage(parse_location("", base_dir=Path(tmp), data_dir=Path(tmp)))
        migrations.upgrade(sqlite, ["audit"])
        log = open_log(sqlite)
        baseline = latency(log, args.appends, 0)
        log.close()
        sqlite.close()

    with PgCluster.create(Path(tempfile.mkdtemp(prefix="consortium-pg-"))) as cluster:
        url = cluster.create_database("bench")
        os.environ["PGPASSWORD"] = cluster.password
        location = parse_location(url, base_dir=Path.cwd(), data_dir=Path.cwd())
        storages = [Storage(location, PoolSettings()) for _ in range(3)]
        migrations.upgrade(storages[0], ["audit"])
        logs = [open_log(s) for s in storages]
        try:
            one = latency(logs[0], args.appends, 0)
            n = args.appends
            one_replica = concurrent(logs[:1], 6, args.concurrent, n)
            n += args.concurrent
            three_replicas = concurrent(logs, 2, args.concurrent, n)
            n += args.concurrent
            with storages[1].database("audit").connect() as conn:
                query = select(ENTRIES.c.seq).order_by(ENTRIES.c.seq)
                positions = [int(seq) for seq in conn.execute(query).scalars()]
            whole = positions == list(range(len(positions))) and len(positions) >= n
        finally:
            for log in logs:
                log.close()
            for s in storages:
                s.close()

    print(
        json.dumps(
            {
                "benchmark": "audit_replicas",
                "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
                "append_one_thread": {
                    "sqlite_baseline": baseline,
                    "postgresql": one,
                    "ratio_p50_postgresql_over_sqlite": round(
                        one["p50_us"] / baseline["p50_us"], 1
                    ),
                },
                "appends_per_s_postgresql": {
                    "one_replica_6_threads": round(one_replica),
                    "three_replicas_2_threads_each": round(three_replicas),
                    "ratio_three_over_one": round(three_replicas / one_replica, 2),
                },
                "positions_gapless": whole,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
