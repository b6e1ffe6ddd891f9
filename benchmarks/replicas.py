"""One organization's node on SQLite against the same node on PostgreSQL, and two and three
replicas of it on one PostgreSQL (issue 28): echo backend, loopback, each node a real
`consortium node start` process, a throwaway PostgreSQL 15 cluster
(consortium/launch/pgcluster.py) on the same 2 cores.

Each arm serves `/v1/chat/completions` (whole answers, the organization's own API key:
the key lookup, the per-key limiter, the task written as it is created, worked and
completed) to C concurrent clients for `--seconds`, the clients sent round robin over
the replicas; requests/s and p50/p99 latency, and each arm's requests/s over (a)'s:

- (a) sqlite: one node, [storage] on its data directory (the default);
- (b) postgresql: one node, [storage] url = the cluster;
- (c) 2 replicas and (d) 3 replicas: node.toml files that differ only in their ports and
  data directory (same keys, same [storage] url).

C = 16 and 64. Arms alternate per concurrency level so drift on the shared machine hits
all alike. Prints one JSON object.

    .venv/bin/python benchmarks/replicas.py [--seconds 15] [--clients 16 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

import httpx
import tomli_w

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from consortium.launch.local import node_environment, start_node
from consortium.launch.pgcluster import PgCluster
from consortium.launch.supervisor import Supervisor
from consortium.node.config import load_config
from consortium.node.setup import init_node, local_api_key
from consortium.storage.copy import copy_storage
from consortium.storage.storage import Storage
from consortium.storage.url import parse_location


def replica_configs(base: Path, n: int, storage: dict[str, Any] | None) -> list[Path]:
    """The organization's node.toml and n-1 copies that differ in ports and data
    directory only (free ports), all with `storage`."""
    data = tomllib.loads((base / "node.toml").read_text())
    paths = []
    for i in range(n):
        copy = json.loads(json.dumps(data))
        copy["server"]["grpc_port"] = 0
        copy["server"]["http_port"] = 0
        copy["node"]["data_dir"] = f"data-{i}" if storage else "data"
        copy["model"]["threads"] = 1
        if storage:
            copy["storage"] = storage
        path = base / f"replica-{i}.toml"
        path.write_text(tomli_w.dumps(copy))
        paths.append(path)
    return paths


async def load(urls: list[str], key: str, clients: int, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds
    body = {"model": "echo", "messages": [{"role": "user", "content": "one two three"}]}
    headers = {"authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=clients * 2, max_keepalive_connections=clients * 2)

    async def client(i: int, http: httpx.AsyncClient) -> None:
        nonlocal errors
        n = i
        while time.monotonic() < deadline:
            url = urls[n % len(urls)] + "/v1/chat/completions"
            n += 1
            started = time.perf_counter()
            r = await http.post(url, json=body, headers=headers)
            if r.status_code == 200:
                latencies.append(time.perf_counter() - started)
            else:
                errors += 1

    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        started = time.monotonic()
        await asyncio.gather(*(client(i, http) for i in range(clients)))
        elapsed = time.monotonic() - started
    if not latencies:
        raise RuntimeError(f"no request succeeded ({errors} failed)")
    latencies.sort()
    return {
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(statistics.median(latencies) * 1e3, 2),
        "p99_ms": round(latencies[int(0.99 * (len(latencies) - 1))] * 1e3, 2),
        "errors": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--clients", type=int, nargs="+", default=[16, 64])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="consortium-replicas-") as tmp:
        root = Path(tmp)
        pg = PgCluster.create(Path(tempfile.mkdtemp(prefix="consortium-pg-")))
        try:
            url = pg.create_database("acme")
            password = root / "db-password"
            password.write_text(pg.password + "\n")
            password.chmod(0o600)
            storage = {"url": url, "password_file": str(password)}
            init_node("acme", root / "acme", backend="echo", model="echo", threads=1)
            cfg = load_config(root / "acme" / "node.toml")
            key = local_api_key(cfg)
            assert key is not None
            # What init made (the API key) into the database, as `consortium db migrate`.
            source = Storage(parse_location("", base_dir=root, data_dir=cfg.data_dir))
            dest = Storage(
                parse_location(url, base_dir=root, data_dir=root, password_file=str(password))
            )
            try:
                copy_storage(source, dest)
            finally:
                source.close()
                dest.close()
            arms = {
                "a_sqlite": replica_configs(root / "acme", 1, None),
                "b_postgresql": replica_configs(root / "acme", 1, storage),
                "c_2_replicas": replica_configs(root / "acme", 2, storage),
                "d_3_replicas": replica_configs(root / "acme", 3, storage),
            }
            results: dict[str, dict[str, Any]] = {str(c): {} for c in args.clients}
            for clients in args.clients:
                for arm, configs in arms.items():
                    supervisor = Supervisor(root, node_environment(), grace_s=10.0)
                    try:
                        urls = []
                        for i, config in enumerate(configs):
                            _, http_url = start_node(
                                config, root / f"{arm}-{i}.log", supervisor=supervisor
                            )
                            urls.append(http_url)
                        asyncio.run(load(urls, key, clients, 2.0))  # warm up
                        results[str(clients)][arm] = asyncio.run(
                            load(urls, key, clients, args.seconds)
                        )
                    finally:
                        supervisor.stop()
                base = results[str(clients)]["a_sqlite"]["requests_per_s"]
                for row in results[str(clients)].values():
                    row["ratio_over_sqlite"] = round(row["requests_per_s"] / base, 3)
        finally:
            pg.destroy()
    print(
        json.dumps(
            {
                "clients": results,
                "_setup": {
                    "seconds": args.seconds,
                    "backend": "echo",
                    "route": "/v1/chat/completions, whole answers, API key",
                    "postgresql": "15, throwaway cluster on the same machine, fsync off",
                },
            }
        )
    )


if __name__ == "__main__":
    main()
