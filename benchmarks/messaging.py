"""What do A2A and signatures cost per message? Client and server in separate processes,
the same ~500-byte text, an echo executor (no model):

  (a) raw grpc.aio unary echo (bytes in, bytes out);
  (b) unsigned A2A SendMessage round trip through the node's gRPC stack and request
      handler; the executor answers with a Message, so the node replies directly
      (consortium/node/a2a/direct.py) without a2a-sdk's task machinery;
  (c) the same, signed by the client, verified by the server (signature, membership,
      freshness, replay cache in SQLite), answered with a signed reply bound to the
      request, which the client verifies;
  (d) for reference, (c) through a2a-sdk's full task path (an executor that does not
      reply directly: active task, event queues, task store), which every task takes.

(b) authenticates with an API key, as a local app does. The cost of authorizing a task
method: GetTask round trips to (c)'s server from the anonymous loopback user (no
credential to check), with an API key, and with a member's signed call proof (signed by
the client, verified by the server: signature, membership, freshness, replay); all three
ask for an unknown task, so they differ only in who the caller is.

The servers run side by side and the client alternates a, b, c, d in rounds, so drift
on a shared machine hits all three alike. Prints one JSON object: p50/p99 round-trip
latency and messages/s, sequential and with 32 concurrent callers, for each; and the
ratios c/a, c/b and d/a.

    .venv/bin/python benchmarks/messaging.py [--requests 1000]
"""

from __future__ import annotations

import os

# As in a node process (consortium/__init__.py): before a2a is imported.
os.environ.setdefault("OTEL_INSTRUMENTATION_A2A_SDK_ENABLED", "false")

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.context import ServerCallContext
from a2a.server.events import EventQueue
from a2a.types import a2a_pb2, a2a_pb2_grpc
from jwcrypto import jwk
from opentelemetry.trace import NoOpTracer

from consortium.federation.roster import Member, MemberKey, Roster
from consortium.launch.supervisor import Supervisor
from consortium.node.a2a.direct import DirectReplies
from consortium.node.a2a.grpc_binding import SpecGrpcHandler, a2a_generic_handler
from consortium.node.a2a.request_handler import VERIFIED_KEY, NodeRequestHandler
from consortium.node.auth import GrpcContextBuilder
from consortium.trust.admission import MessageVerifier, Verified
from consortium.trust.api_keys import ApiKeys
from consortium.trust.call_proof import PROOF_HEADER
from consortium.trust.claims import digest
from consortium.trust.keys import generate_key, public_jwk
from consortium.trust.replay import ReplayCache
from consortium.trust.signing import Signer, SigningIdentity, sign_call, sign_request

TEXT = ("The quick brown fox jumps over the lazy dog. " * 12)[:500]
FEDERATION = "bench"
ECHO_METHOD = "/bench.Echo/Echo"
# GetTask round trips to the signed server, as three kinds of caller.
AUTH_MODES = ("get_anonymous", "get_api_key", "get_call_proof")


class EchoExecutor(AgentExecutor):
    """Replies with a Message holding the same text, through the task path; signed if the
    request was."""

    def __init__(self, signer: Signer | None) -> None:
        self._signer = signer

    def echo(self, message: a2a_pb2.Message, verified: object) -> a2a_pb2.Message:
        reply = a2a_pb2.Message(
            message_id=str(uuid.uuid4()),
            role=a2a_pb2.ROLE_AGENT,
            parts=list(message.parts),
            context_id=message.context_id,
        )
        if self._signer is not None and isinstance(verified, Verified):
            reply = self._signer.sign_reply(reply, verified)
        return reply

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        assert context.message is not None
        verified = context.call_context.state.get(VERIFIED_KEY)
        await event_queue.enqueue_event(self.echo(context.message, verified))

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        pass


class DirectEchoExecutor(EchoExecutor, DirectReplies):
    """The same echo, answered directly (no task)."""

    async def reply(
        self, message: a2a_pb2.Message, context: ServerCallContext
    ) -> a2a_pb2.Message | None:
        return self.echo(message, context.state.get(VERIFIED_KEY))


def member(org: str, key: jwk.JWK) -> Member:
    pub = public_jwk(key)
    return Member(org_id=org, keys=[MemberKey(kid=pub["kid"], x=pub["x"])])


def card() -> a2a_pb2.AgentCard:
    from consortium.node.a2a.agent_card import build_agent_card

    return build_agent_card(
        org_id="server",
        display_name="bench",
        description="messaging benchmark",
        grpc_url="127.0.0.1:0",
        http_url="http://127.0.0.1:0",
        model_name="echo",
        model_backend="echo",
        context_size=0,
    )


async def serve(mode: str, keys: dict[str, Any], port_file: Path) -> None:
    server = grpc.aio.server()
    if mode == "raw":

        async def echo(request: bytes, _: grpc.aio.ServicerContext) -> bytes:
            return request

        handler = grpc.method_handlers_generic_handler(
            "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
        )
        server.add_generic_rpc_handlers((handler,))
    else:
        client_key, server_key = jwk.JWK(**keys["client"]), jwk.JWK(**keys["server"])
        roster = Roster(
            federation_id=FEDERATION,
            name="Bench",
            members=[member("client", client_key), member("server", server_key)],
        )
        store_dir = Path(tempfile.mkdtemp(prefix="consortium-msgbench-"))
        from consortium.node.store import SqliteTaskStore

        store = SqliteTaskStore(store_dir / "tasks.sqlite3")
        api_keys = ApiKeys(Path(keys["api_keys_path"]))
        if mode == "unsigned":
            a2a_handler = NodeRequestHandler(
                agent_executor=DirectEchoExecutor(None),
                task_store=store,
                agent_card=card(),
                tracer=NoOpTracer(),
                keys=api_keys,
            )
        else:
            signer = Signer(SigningIdentity(server_key, "server", FEDERATION))
            verifier = MessageVerifier(
                org_id="server",
                roster=lambda: roster,
                replay=ReplayCache(store_dir / "replay.sqlite3"),
            )
            executor = EchoExecutor(signer) if mode == "signed_task" else DirectEchoExecutor(signer)
            a2a_handler = NodeRequestHandler(
                agent_executor=executor,
                task_store=store,
                agent_card=card(),
                tracer=NoOpTracer(),
                verifier=verifier,
                keys=api_keys,
                anonymous_loopback=True,
            )
        server.add_generic_rpc_handlers(
            (a2a_generic_handler(SpecGrpcHandler(a2a_handler, GrpcContextBuilder())),)
        )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await asyncio.to_thread(port_file.write_text, str(port))
    await server.wait_for_termination()


async def timed(
    call: Callable[[], Awaitable[None]], n: int, concurrency: int
) -> tuple[list[float], float]:
    """n calls by `concurrency` callers: their latencies and the wall time."""
    latencies: list[float] = []

    async def worker(count: int) -> None:
        for _ in range(count):
            t = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - t)

    started = time.perf_counter()
    await asyncio.gather(*(worker(n // concurrency) for _ in range(concurrency)))
    return latencies, time.perf_counter() - started


def summarize(latencies: list[float], elapsed: float) -> dict[str, float]:
    latencies = sorted(latencies)
    return {
        "p50_ms": round(statistics.median(latencies) * 1000, 3),
        "p99_ms": round(latencies[max(int(len(latencies) * 0.99) - 1, 0)] * 1000, 3),
        "messages_per_s": round(len(latencies) / elapsed, 1),
    }


def start_server(servers: Supervisor, mode: str, keys_file: Path) -> int:
    """One server process (its output in server-MODE.log); its port, once it wrote it."""
    port_file = keys_file.parent / f"port-{mode}"
    cmd = [sys.executable, __file__, "--serve", mode, "--keys", str(keys_file)]
    servers.start(
        f"server-{mode}",
        [*cmd, "--port-file", str(port_file)],
        ready=lambda: port_file.exists() and bool(port_file.read_text()),
        timeout=60,
        poll_s=0.05,
    )
    return int(port_file.read_text())


# The client's signing and verification times inside (c)'s round trips: the same work as
# per_message_costs, measured where caches are cold from the gRPC calls around it.
IN_FLOW: dict[str, list[float]] = {"sign": [], "verify": []}


def make_call(
    mode: str, port: int, keys: dict[str, Any]
) -> tuple[Callable[[], Awaitable[None]], grpc.aio.Channel]:
    """The round trip of one mode, and the channel to close afterwards."""
    client_key = jwk.JWK(**keys["client"])
    server_key = jwk.JWK(**keys["server"])
    client = SigningIdentity(client_key, "client", FEDERATION)
    roster = Roster(
        federation_id=FEDERATION,
        name="Bench",
        members=[member("client", client_key), member("server", server_key)],
    )
    replay = ReplayCache(
        Path(tempfile.mkdtemp(prefix="consortium-msgbench-client-")) / "replay.sqlite3"
    )
    verifier = MessageVerifier(org_id="client", roster=lambda: roster, replay=replay)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    raw = channel.unary_unary(ECHO_METHOD)
    stub = a2a_pb2_grpc.A2AServiceStub(channel)
    payload = TEXT.encode()
    with_key = (("authorization", f"Bearer {keys['api_key']}"),)

    async def call_raw() -> None:
        assert await raw(payload) == payload

    async def call_a2a() -> None:
        msg = a2a_pb2.Message(
            message_id=str(uuid.uuid4()), role=a2a_pb2.ROLE_USER, parts=[a2a_pb2.Part(text=TEXT)]
        )
        resp = await stub.SendMessage(a2a_pb2.SendMessageRequest(message=msg), metadata=with_key)
        assert resp.message.parts[0].text == TEXT

    unknown = a2a_pb2.GetTaskRequest(id="no-such-task")

    async def get_task(metadata: tuple[tuple[str, str], ...]) -> None:
        try:
            await stub.GetTask(unknown, metadata=metadata)
        except grpc.aio.AioRpcError as e:
            assert e.code() == grpc.StatusCode.NOT_FOUND, e.code()
        else:
            raise AssertionError("an unknown task was found")

    async def get_anonymous() -> None:
        await get_task(())

    async def get_api_key() -> None:
        await get_task(with_key)

    async def get_call_proof() -> None:
        proof = sign_call("GetTask", unknown, client, recipient="server")
        await get_task(((PROOF_HEADER, proof),))

    async def call_signed() -> None:
        msg = a2a_pb2.Message(
            message_id=str(uuid.uuid4()), role=a2a_pb2.ROLE_USER, parts=[a2a_pb2.Part(text=TEXT)]
        )
        started = time.perf_counter()
        signed, request_digest = sign_request(msg, client, recipient="server")
        signed_at = time.perf_counter()
        resp = await stub.SendMessage(a2a_pb2.SendMessageRequest(message=signed))
        received = time.perf_counter()
        verifier.verify(resp.message, request_digest=request_digest)
        if mode == "signed":
            IN_FLOW["sign"].append(signed_at - started)
            IN_FLOW["verify"].append(time.perf_counter() - received)
        assert resp.message.parts[0].text == TEXT

    calls: dict[str, Callable[[], Awaitable[None]]] = {
        "raw": call_raw,
        "unsigned": call_a2a,
        "signed": call_signed,
        "signed_task": call_signed,
        "get_anonymous": get_anonymous,
        "get_api_key": get_api_key,
        "get_call_proof": get_call_proof,
    }
    return calls[mode], channel


async def run_interleaved(
    ports: dict[str, int], keys: dict[str, Any], n: int, rounds: int
) -> dict[str, Any]:
    """Rounds of a, b, c (sequential, then 32 concurrent), so drift on a shared machine
    hits all three alike; figures are over all rounds."""
    made = {mode: make_call(mode, port, keys) for mode, port in ports.items()}
    for call, _ in made.values():
        for _ in range(50):  # warm-up: connections, caches
            await call()
    totals: dict[tuple[str, int], tuple[list[float], float]] = {}
    for r in range(rounds):
        modes = list(ports)[r % len(ports) :] + list(ports)[: r % len(ports)]
        for concurrency in (1, 32):
            for mode in modes:
                lat, elapsed = await timed(
                    made[mode][0], max(n // rounds, concurrency), concurrency
                )
                prev_lat, prev_elapsed = totals.get((mode, concurrency), ([], 0.0))
                totals[(mode, concurrency)] = (prev_lat + lat, prev_elapsed + elapsed)
    for _, channel in made.values():
        await channel.close()
    return {
        mode: {
            "sequential": summarize(*totals[(mode, 1)]),
            "concurrent_32": summarize(*totals[(mode, 32)]),
        }
        for mode in ports
    }


def per_message_costs(keys: dict[str, Any], n: int = 300) -> dict[str, float]:
    """In-process microseconds per operation on one 500-byte message: where (c) spends."""
    from nacl.signing import SigningKey

    client_key, server_key = jwk.JWK(**keys["client"]), jwk.JWK(**keys["server"])
    client = SigningIdentity(client_key, "client", FEDERATION)
    roster = Roster(
        federation_id=FEDERATION,
        name="Bench",
        members=[member("client", client_key), member("server", server_key)],
    )
    replay = ReplayCache(Path(tempfile.mkdtemp(prefix="consortium-msgbench-micro-")) / "r.sqlite3")
    verifier = MessageVerifier(org_id="server", roster=lambda: roster, replay=replay)

    def fresh() -> a2a_pb2.Message:
        return a2a_pb2.Message(
            message_id=str(uuid.uuid4()), role=a2a_pb2.ROLE_USER, parts=[a2a_pb2.Part(text=TEXT)]
        )

    def sign() -> a2a_pb2.Message:
        return sign_request(fresh(), client, recipient="server")[0]

    signed = [sign() for _ in range(n)]
    api_keys = ApiKeys(Path(keys["api_keys_path"]))
    request = a2a_pb2.GetTaskRequest(id=str(uuid.uuid4()))

    def prove() -> str:
        return sign_call("GetTask", request, client, recipient="server")

    proofs = iter([prove() for _ in range(n)])
    raw_key = SigningKey.generate()
    raw_sig = raw_key.sign(TEXT.encode()).signature

    def per_call(fn: Callable[[], object]) -> float:
        started = time.perf_counter()
        for _ in range(n):
            fn()
        return round((time.perf_counter() - started) / n * 1e6, 1)

    pending = iter(signed)
    return {
        "sign_message_us": per_call(sign),
        "verify_message_us": per_call(lambda: verifier.verify(next(pending))),
        "digest_us": per_call(lambda: digest(signed[0])),
        "raw_ed25519_sign_us": per_call(lambda: raw_key.sign(TEXT.encode())),
        "raw_ed25519_verify_us": per_call(
            lambda: raw_key.verify_key.verify(TEXT.encode(), raw_sig)
        ),
        "api_key_authenticate_us": per_call(lambda: api_keys.authenticate(keys["api_key"])),
        "call_proof_sign_us": per_call(prove),
        "call_proof_verify_us": per_call(
            lambda: verifier.verify_call(next(proofs), "GetTask", request)
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=1200, help="per mode and concurrency")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--serve", choices=["raw", "unsigned", "signed", "signed_task"])
    parser.add_argument("--keys", type=Path)
    parser.add_argument("--port-file", type=Path)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve, json.loads(args.keys.read_text()), args.port_file))
        return
    workdir = Path(tempfile.mkdtemp(prefix="consortium-msgbench-"))
    api_keys = ApiKeys(workdir / "api-keys.sqlite3")
    _, api_key = api_keys.create("bench")
    api_keys.close()
    keys = {
        "client": generate_key().export(as_dict=True),
        "server": generate_key().export(as_dict=True),
        "api_key": api_key,
        "api_keys_path": str(workdir / "api-keys.sqlite3"),
    }
    keys_file = workdir / "keys.json"
    keys_file.write_text(json.dumps(keys))
    keys_file.chmod(0o600)
    results: dict[str, Any] = {
        "benchmark": "messaging",
        "message_bytes": len(TEXT),
        "requests": args.requests,
        "rounds": args.rounds,
    }
    names = {
        "raw": "a_raw_grpc_echo",
        "unsigned": "b_a2a_unsigned",
        "signed": "c_a2a_signed_verified",
        "signed_task": "d_a2a_signed_verified_task_path",
    }
    with Supervisor(workdir, grace_s=10.0) as servers:
        ports = {mode: start_server(servers, mode, keys_file) for mode in names}
        for mode in AUTH_MODES:
            ports[mode] = ports["signed"]
        measured = asyncio.run(run_interleaved(ports, keys, args.requests, args.rounds))
    for mode, name in names.items():
        results[name] = measured[mode]
    a, b, c, d = (results[names[m]] for m in ("raw", "unsigned", "signed", "signed_task"))
    results["ratio_c_over_a_p50"] = round(c["sequential"]["p50_ms"] / a["sequential"]["p50_ms"], 2)
    results["ratio_c_over_b_p50"] = round(c["sequential"]["p50_ms"] / b["sequential"]["p50_ms"], 2)
    results["ratio_d_over_a_p50"] = round(d["sequential"]["p50_ms"] / a["sequential"]["p50_ms"], 2)
    results["target"] = "ratio_c_over_a_p50 <= 2"
    auth = {mode: measured[mode]["sequential"]["p50_ms"] for mode in AUTH_MODES}
    results["get_task_authorization_p50_ms"] = auth
    results["ratio_get_api_key_over_anonymous_p50"] = round(
        auth["get_api_key"] / auth["get_anonymous"], 2
    )
    results["ratio_get_call_proof_over_anonymous_p50"] = round(
        auth["get_call_proof"] / auth["get_anonymous"], 2
    )
    results["c_client_in_flow_us_p50"] = {
        op: round(statistics.median(times) * 1e6, 1) for op, times in IN_FLOW.items()
    }
    results["per_message_costs_in_process"] = per_message_costs(keys)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
