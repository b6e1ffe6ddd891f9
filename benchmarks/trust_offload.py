"""Where should the node verify a signed message — inline on its event loop, or in a
storage thread? (node/offload.py.) The server-side verification of a ~500-byte signed
request (signature, membership, freshness, and the replay cache's one insert: the
storage call on every message's path), on SQLite and on a real PostgreSQL server (a
throwaway cluster, consortium/launch/pgcluster.py), each way:

  inline  `verifier.check(...)` on the event loop, as the node does on SQLite;
  thread  `await Offload(storage.executor)(...)`, as the node does on PostgreSQL.

For each: µs per message one at a time (p50), messages/s with 32 concurrent callers, and
the event loop's longest stall meanwhile (a 1 ms ticker's worst lateness: what every
other call on the node waits). Prints one JSON object, with thread/inline ratios.

    .venv/bin/python benchmarks/trust_offload.py [--messages 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jwcrypto import jwk

from consortium.federation.roster import Member, MemberKey, Roster
from consortium.node.client import text_message
from consortium.node.offload import INLINE, Offload
from consortium.storage import migrations
from consortium.storage.storage import Storage
from consortium.storage.url import parse_location
from consortium.trust.admission import MessageVerifier
from consortium.trust.claims import read_signed
from consortium.trust.keys import generate_key, public_jwk
from consortium.trust.replay import ReplayCache
from consortium.trust.signing import SigningIdentity, sign_request

TEXT = ("The quick brown fox jumps over the lazy dog. " * 12)[:500]
FEDERATION = "bench"
CONCURRENCY = 32


def member(org: str, key: jwk.JWK) -> Member:
    pub = public_jwk(key)
    return Member(org_id=org, keys=[MemberKey(kid=pub["kid"], x=pub["x"])])


def messages(key: jwk.JWK, n: int) -> list[Any]:
    identity = SigningIdentity(key, "client", FEDERATION)
    out = []
    for _ in range(n):
        signed, _ = sign_request(text_message(TEXT), identity, recipient="server")
        parts = read_signed(signed)
        assert parts is not None
        out.append((signed, parts))
    return out


async def arm(
    verifier: MessageVerifier, offload: Offload, batch: list[Any], concurrent: list[Any]
) -> dict[str, float]:
    def check(item: Any) -> Callable[[], object]:
        return lambda: verifier.check(item[0], item[1])

    latencies = []
    for item in batch:
        started = time.perf_counter()
        await offload(check(item))
        latencies.append(time.perf_counter() - started)
    stall = 0.0
    done = False

    async def ticker() -> None:
        nonlocal stall
        while not done:
            before = time.perf_counter()
            await asyncio.sleep(0.001)
            stall = max(stall, time.perf_counter() - before - 0.001)

    queue = list(concurrent)

    async def worker() -> None:
        while queue:
            await offload(check(queue.pop()))

    tick = asyncio.create_task(ticker())
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    elapsed = time.perf_counter() - started
    done = True
    await tick
    return {
        "p50_us": round(statistics.median(latencies) * 1e6, 1),
        "concurrent_msgs_per_s": round(len(concurrent) / elapsed, 1),
        "loop_stall_max_ms": round(stall * 1e3, 2),
    }


async def run_storage(storage: Storage, key: jwk.JWK, n: int) -> dict[str, Any]:
    migrations.upgrade(storage, ["replay"])
    roster = Roster(
        federation_id=FEDERATION,
        name="Bench",
        members=[member("client", key), member("server", generate_key())],
    )
    replay = ReplayCache(storage.database("replay"))
    verifier = MessageVerifier(org_id="server", roster=lambda: roster, replay=replay)
    out: dict[str, Any] = {}
    # Alternate the arms in rounds, so drift on a shared machine hits both alike.
    rounds = 4
    results: dict[str, list[dict[str, float]]] = {"inline": [], "thread": []}
    for _ in range(rounds):
        for name, offload in (("inline", INLINE), ("thread", Offload(storage.executor))):
            results[name].append(
                await arm(verifier, offload, messages(key, n // rounds), messages(key, n // rounds))
            )
    for name, runs in results.items():
        out[name] = {
            k: round(statistics.median(r[k] for r in runs), 2) for k in runs[0] if k in runs[0]
        }
    out["thread_over_inline_p50"] = round(out["thread"]["p50_us"] / out["inline"]["p50_us"], 2)
    out["thread_over_inline_msgs_per_s"] = round(
        out["thread"]["concurrent_msgs_per_s"] / out["inline"]["concurrent_msgs_per_s"], 2
    )
    return out


async def main(n: int) -> dict[str, Any]:
    from consortium.launch.pgcluster import PgCluster

    key = generate_key()
    out: dict[str, Any] = {"messages_per_arm": n, "concurrency": CONCURRENCY}
    with tempfile.TemporaryDirectory(prefix="consortium-offload-") as d:
        sqlite = Storage(parse_location("", base_dir=Path(d), data_dir=Path(d)))
        try:
            out["sqlite"] = await run_storage(sqlite, key, n)
        finally:
            sqlite.close()
    cluster = PgCluster.create(Path(tempfile.mkdtemp(prefix="consortium-offload-pg-")))
    try:
        url = cluster.create_database("bench")
        password_file = Path(tempfile.mkdtemp(prefix="consortium-offload-pw-")) / "password"
        password_file.write_text(cluster.password + "\n")
        password_file.chmod(0o600)
        location = parse_location(
            url,
            base_dir=password_file.parent,
            data_dir=password_file.parent,
            password_file=str(password_file),
        )
        pg = Storage(location)
        try:
            out["postgresql"] = await run_storage(pg, key, n)
        finally:
            pg.close()
    finally:
        cluster.destroy()
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    args = parser.parse_args()
    json.dump(asyncio.run(main(args.messages)), sys.stdout, indent=2)
    print()
