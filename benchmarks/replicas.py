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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import tomli_w
from a2a.types import a2a_pb2
from a2a.utils.constants import TransportProtocol

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from consortium.launch.local import node_environment, start_node
from consortium.launch.pgcluster import PgCluster
from consortium.launch.supervisor import Supervisor
from consortium.node.client import ask, fetch_agent_card, open_client
from consortium.node.config import load_config
from consortium.node.failover import card_for, interfaces
from consortium.node.setup import init_node, local_api_key
from consortium.storage.copy import copy_storage
from consortium.storage.storage import Storage
from consortium.storage.url import parse_location


def replica_configs(
    base: Path,
    n: int,
    storage: dict[str, Any] | None,
    model: dict[str, Any] | None = None,
    name: str = "replica",
) -> list[Path]:
    """The organization's node.toml and n-1 copies that differ in ports and data
    directory only (free ports), all with `storage` (and `model` settings)."""
    data = tomllib.loads((base / "node.toml").read_text())
    paths = []
    for i in range(n):
        copy = json.loads(json.dumps(data))
        copy["server"]["grpc_port"] = 0
        copy["server"]["http_port"] = 0
        copy["node"]["data_dir"] = f"data-{name}-{i}" if storage else "data"
        copy["model"]["threads"] = 1
        # Counted (on PostgreSQL in the shared database) but never reached: every arm's
        # requests (up to 64 at once) go through the one key.
        copy["limits"] = {"requests_per_minute": 1_000_000, "concurrent_requests": 1000}
        copy["model"].update(model or {})
        if storage:
            copy["storage"] = storage
        path = base / f"{name}-{i}.toml"
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


TERMINAL = {"completed", "failed", "canceled", "rejected"}
FAILOVER_AFTER_S = 5.0


def wait_listed(http_url: str, targets: list[str], timeout: float = 60.0) -> None:
    """Until the card at `http_url` lists every replica's gRPC interface."""
    deadline = time.monotonic() + timeout
    while True:
        card = httpx.get(http_url + "/.well-known/agent-card.json", timeout=10).json()
        listed = [i["url"] for i in card.get("supportedInterfaces", [])]
        if all(any(u.endswith(t) for u in listed) for t in targets):
            return
        if time.monotonic() > deadline:
            raise TimeoutError("the replicas' card does not list them all")
        time.sleep(0.2)


async def failover(
    http_urls: list[str], grpc_targets: list[str], key: str, kill: Callable[[], None], streams: int
) -> dict[str, Any]:
    """`streams` streamed tasks sent round robin to the replicas; once each has its task,
    replica 0 is SIGKILLed (`kill`). Then: the time until every task replica 0 was
    running is terminal (read through a survivor), the time until every client whose
    stream broke was served by a survivor (asking again through a client made from the
    card, which fails over), and how many tasks were lost or stuck."""
    card = await fetch_agent_card(http_urls[1])
    listed = interfaces(card, TransportProtocol.GRPC)
    urls = [next(u for u in listed if u.endswith(t)) for t in grpc_targets]
    singles = [
        open_client(card_for(card, url, TransportProtocol.GRPC), api_key=key) for url in urls
    ]
    tasks: dict[int, str] = {}
    outcome: dict[int, str] = {}
    served_at: dict[int, float] = {}
    accepted_at: dict[int, float] = {}
    started: dict[int, asyncio.Event] = {i: asyncio.Event() for i in range(streams)}
    killed_at = 0.0

    async def one(i: int) -> None:
        client = singles[i % len(singles)]

        def took(task_id: str) -> None:
            tasks[i] = task_id
            started[i].set()

        try:
            answer = await ask(client, f"stream {i} " + "word " * 20, on_task=took, timeout=120)
            outcome[i] = answer.state
        except Exception as e:  # the replica died under it
            started[i].set()
            outcome[i] = f"error: {type(e).__name__}"
            again = open_client(card, api_key=key)  # every replica: fails over

            def accepted(_task_id: str) -> None:
                accepted_at[i] = time.monotonic() - killed_at

            try:
                answer = await ask(again, f"again {i}", on_task=accepted, timeout=120)
                if answer.state == "completed":
                    served_at[i] = time.monotonic() - killed_at
            finally:
                await again.close()

    runs = [asyncio.create_task(one(i)) for i in range(streams)]
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started.values())), 60)
    dead = [tasks[i] for i in tasks if i % len(singles) == 0]
    pending = set(dead)
    survivor = singles[1]
    terminal_after: float | None = None

    async def watch() -> None:
        """Reads the dead replica's tasks through a survivor until each is terminal."""
        nonlocal terminal_after
        deadline = time.monotonic() + 120
        while pending and time.monotonic() < deadline:
            for task_id in list(pending):
                task = await survivor.get_task(a2a_pb2.GetTaskRequest(id=task_id))
                state = a2a_pb2.TaskState.Name(task.status.state).removeprefix("TASK_STATE_")
                if state.lower() in TERMINAL:
                    pending.discard(task_id)
            if pending:
                await asyncio.sleep(0.1)
        if not pending:
            terminal_after = round(time.monotonic() - killed_at, 2)

    killed_at = time.monotonic()
    kill()
    await asyncio.gather(watch(), *runs)
    for client in singles:
        await client.close()
    broken = [i for i in outcome if outcome[i].startswith("error")]
    return {
        "streams": streams,
        "on_killed_replica": len(dead),
        "streams_broken": len(broken),
        "streams_completed": sum(v == "completed" for v in outcome.values()),
        "killed_tasks_terminal_after_s": terminal_after,
        "tasks_stuck": len(pending),
        # A survivor took each broken client's new task (its first event) / answered it.
        "broken_clients_accepted_after_s": (
            round(max(accepted_at.values()), 2) if accepted_at else None
        ),
        "broken_clients_served_after_s": round(max(served_at.values()), 2) if served_at else None,
        "broken_clients_not_served": len(broken) - len(served_at),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--clients", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--streams", type=int, default=50, help="streamed tasks at the kill")
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
            # Failover: 3 replicas, one SIGKILLed under streamed tasks.
            quick = {**storage, "heartbeat_s": 1.0, "failover_after_s": FAILOVER_AFTER_S}
            configs = replica_configs(
                root / "acme", 3, quick, {"echo_token_delay_s": 0.1}, name="failover"
            )
            supervisor = Supervisor(root, node_environment(), grace_s=10.0)
            try:
                children, http_urls, targets = [], [], []
                for i, config in enumerate(configs):
                    child, http_url = start_node(
                        config, root / f"failover-{i}.log", supervisor=supervisor
                    )
                    children.append(child)
                    http_urls.append(http_url)
                    targets.append(child.ready_line.split("grpc=", 1)[1].split()[0])
                wait_listed(http_urls[1], targets)
                failed_over = asyncio.run(
                    failover(http_urls, targets, key, children[0].process.kill, args.streams)
                )
            finally:
                supervisor.stop()
        finally:
            pg.destroy()
    print(
        json.dumps(
            {
                "clients": results,
                "failover": failed_over,
                "_setup": {
                    "seconds": args.seconds,
                    "backend": "echo",
                    "route": "/v1/chat/completions, whole answers, API key",
                    "postgresql": "15, throwaway cluster on the same machine, fsync off",
                    "failover": f"3 replicas, heartbeat 1 s, failover_after_s {FAILOVER_AFTER_S}, "
                    "echo 0.1 s per token, replica 0 SIGKILLed once every stream has its task",
                },
            }
        )
    )


if __name__ == "__main__":
    main()
