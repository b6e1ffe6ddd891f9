"""One client, one connection, one request after another: what does a keep-alive HTTP
client get from a node, against a gRPC client? The echo model (the network is measured,
not a model), one node (`consortium node start`, its own process), blocking clients as
most applications use them (httpx.Client, as the OpenAI SDK's; a grpc channel):

  (a) A2A SendMessage over gRPC (one channel), the baseline;
  (b) A2A SendMessage over JSON-RPC/HTTP (one keep-alive httpx.Client);
  (c) POST /v1/chat/completions (the same client);
  (d) GET /healthz on that keep-alive connection, and (e) on a new connection each time.

Rounds alternate a, b, c, d, e so drift on a shared machine hits them alike. Prints one
JSON object: requests/s and p50/p90 latency of each, and the ratios a / b and a / c of
requests/s (target <= 2: HTTP within 2 x of gRPC). A delay only on requests after the
first of a connection (Nagle's algorithm meeting the client's delayed ACK, ~40 ms) shows
as d far slower than e.

    .venv/bin/python benchmarks/keepalive.py [--requests 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import grpc
import httpx
from a2a.types import a2a_pb2, a2a_pb2_grpc

from consortium.launch.local import start_node
from consortium.node.client import text_message
from consortium.node.config import load_config
from consortium.node.setup import init_node, local_api_key

PROMPT = "Say hello."
ARMS = {
    "a": "a_a2a_grpc",
    "b": "b_a2a_jsonrpc_http",
    "c": "c_openai_chat_http",
    "d": "d_healthz_keepalive",
    "e": "e_healthz_new_connection",
}


def echo_node(workdir: Path) -> Path:
    """A node on the echo model, without per-caller limits (the
    benchmark sends more than a minute's default allowance)."""
    init_node("bench", workdir, model="smollm2-135m", grpc_port=0, http_port=0)
    config = workdir / "node.toml"
    text = config.read_text().replace('backend = "llama_cpp"', 'backend = "echo"')
    config.write_text(text + "\n[limits]\nrequests_per_minute = 0\ntokens_per_minute = 0\n")
    return config


def summarize(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "requests": len(latencies),
        "requests_per_s": round(len(latencies) / sum(latencies), 1),
        "latency_p50_ms": round(statistics.median(ordered) * 1000, 2),
        "latency_p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))] * 1000, 2),
    }


def timed(n: int, call: Callable[[], None]) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        call()
        out.append(time.perf_counter() - started)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=200, help="per arm and round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="consortium-keepalive-"))
    config = echo_node(workdir)
    child, http_url = start_node(config, workdir / "node.log")
    grpc_target = dict(part.split("=", 1) for part in child.ready_line.split()[1:])["grpc"]
    key = local_api_key(load_config(config))
    headers = {"authorization": f"Bearer {key}"} if key else {}
    try:
        with (
            grpc.insecure_channel(grpc_target) as channel,
            httpx.Client(base_url=http_url, headers=headers, timeout=60) as http,
            # No connection kept: a new one for every request.
            httpx.Client(
                base_url=http_url, timeout=60, limits=httpx.Limits(max_keepalive_connections=0)
            ) as fresh,
        ):
            stub = a2a_pb2_grpc.A2AServiceStub(channel)
            a2a_metadata = (("a2a-version", "1.0"), *((k, v) for k, v in headers.items()))
            model = http.get("/v1/models").raise_for_status().json()["data"][0]["id"]
            chat = {"model": model, "messages": [{"role": "user", "content": PROMPT}]}

            def over_grpc() -> None:
                request = a2a_pb2.SendMessageRequest(message=text_message(PROMPT))
                task = stub.SendMessage(request, metadata=a2a_metadata, timeout=60).task
                if task.status.state != a2a_pb2.TASK_STATE_COMPLETED:
                    raise RuntimeError(f"task {a2a_pb2.TaskState.Name(task.status.state)}")

            def over_jsonrpc() -> None:
                message = {
                    "messageId": str(uuid.uuid4()),
                    "role": "ROLE_USER",
                    "parts": [{"text": PROMPT}],
                }
                body = {"jsonrpc": "2.0", "id": 1, "method": "SendMessage"}
                r = http.post(
                    "/",
                    json={**body, "params": {"message": message}},
                    headers={"A2A-Version": "1.0"},
                )
                state = r.raise_for_status().json()["result"]["task"]["status"]["state"]
                if state != "TASK_STATE_COMPLETED":
                    raise RuntimeError(f"task {state}")

            calls: dict[str, Callable[[], None]] = {
                "a": over_grpc,
                "b": over_jsonrpc,
                "c": lambda: http.post("/v1/chat/completions", json=chat).raise_for_status(),
                "d": lambda: http.get("/healthz").raise_for_status(),
                "e": lambda: fresh.get("/healthz").raise_for_status(),
            }
            for call in calls.values():  # warm every path (first-call allocations)
                timed(3, call)
            samples: dict[str, list[float]] = {arm: [] for arm in calls}
            for _ in range(args.rounds):
                for arm, call in calls.items():
                    samples[arm] += timed(args.requests, call)
    finally:
        child.stop()
    results = {ARMS[arm]: summarize(s) for arm, s in samples.items()}

    def ratio(x: str, y: str) -> float:
        return round(results[ARMS[x]]["requests_per_s"] / results[ARMS[y]]["requests_per_s"], 2)

    print(
        json.dumps(
            {
                "benchmark": "keepalive",
                "model": "echo",
                "requests_per_arm": args.requests * args.rounds,
                **results,
                "ratio_requests_per_s_a_over_b": ratio("a", "b"),
                "ratio_requests_per_s_a_over_c": ratio("a", "c"),
                "ratio_latency_p50_d_over_e": round(
                    results[ARMS["d"]]["latency_p50_ms"] / results[ARMS["e"]]["latency_p50_ms"], 2
                ),
                "target": "ratio_requests_per_s_a_over_b and _a_over_c <= 2",
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
