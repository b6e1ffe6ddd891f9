"""What does serving a model through a node cost? Same prompts, model and settings:

  (a) llama-cpp-python called directly, in this process, with the prompt the node builds
      (create_chat_completion for chat models, create_completion with the few-shot
      prompt and stops for base models);
  (b) a node (`consortium node start`, its own process) over A2A gRPC streaming, called
      from this process with the a2a-sdk client.

Runs alternate a, b, a, b ... so drift on a shared machine hits both alike. Prints one
JSON object: tokens/s and latency for both, and the ratio b / a (target >= 0.95).

    .venv/bin/python benchmarks/node_overhead.py [--model smollm2-135m] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from consortium.launch.local import start_node
from consortium.llm.llama_cpp_backend import system_info
from consortium.llm.prompts import COMPLETION_STOPS, completion_prompt
from consortium.llm.registry import BUNDLED, resolve_model_file
from consortium.llm.settings import DEFAULT_SYSTEM_PROMPT
from consortium.node.client import ask, fetch_agent_card, open_client
from consortium.node.setup import init_node

PROMPTS = (
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how a bicycle works, step by step, for a curious child.",
    "Describe a busy market in a small coastal town on a summer morning.",
)
MAX_TOKENS = 128
CONTEXT = 2048
THREADS = 2


def direct_run(llm: Any, prompt: str, prompt_format: str) -> tuple[float, int]:
    """The node's prompt for this model, sent straight to llama-cpp-python."""
    started = time.perf_counter()
    if prompt_format == "completion":
        out = llm.create_completion(
            completion_prompt(prompt),
            max_tokens=MAX_TOKENS,
            temperature=0.0,
            stop=list(COMPLETION_STOPS),
        )
    else:
        out = llm.create_chat_completion(
            messages=[
                {"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
                {"role": "user", "content": prompt},
            ],
            max_tokens=MAX_TOKENS,
            temperature=0.0,
        )
    return time.perf_counter() - started, int(out["usage"]["completion_tokens"])


async def node_run(client: Any, prompt: str) -> tuple[float, int]:
    started = time.perf_counter()
    answer = await ask(client, prompt, options={"max_tokens": MAX_TOKENS})
    if answer.state != "completed":
        raise RuntimeError(f"task {answer.state}: {answer.status_text}")
    if answer.provenance.output_tokens is None:
        raise RuntimeError("the answer carries no token count")
    return time.perf_counter() - started, answer.provenance.output_tokens


def summarize(samples: list[tuple[float, int]]) -> dict[str, float]:
    latencies = [s for s, _ in samples]
    tokens = sum(n for _, n in samples)
    return {
        "requests": len(samples),
        "output_tokens": tokens,
        "tokens_per_s": round(tokens / sum(latencies), 2),
        "latency_p50_s": round(statistics.median(latencies), 4),
        "latency_mean_s": round(statistics.fmean(latencies), 4),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--stream-interval", type=float, default=None, help="server.stream_interval_s of the node"
    )
    args = parser.parse_args()

    from llama_cpp import Llama

    path = resolve_model_file(args.model, None)
    fmt = BUNDLED[args.model].prompt_format
    llm = Llama(str(path), n_ctx=CONTEXT, n_threads=THREADS, n_threads_batch=THREADS, verbose=False)

    workdir = Path(tempfile.mkdtemp(prefix="consortium-bench-"))
    init_node("bench", workdir, model=args.model, grpc_port=0, http_port=0)
    config = workdir / "node.toml"
    text = config.read_text().replace("threads = 0", f"threads = {THREADS}")
    text = text.replace("max_tokens = 128", f"max_tokens = {MAX_TOKENS}")
    if args.stream_interval is not None:
        text = re.sub(
            r"(?m)^stream_interval_s = \S+", f"stream_interval_s = {args.stream_interval}", text
        )
    config.write_text(text)
    node_process, http_url = start_node(config, workdir / "node.log")
    try:
        client = open_client(await fetch_agent_card(http_url))
        # Warm both paths (page cache, first-call allocations).
        direct_run(llm, PROMPTS[0], fmt)
        await node_run(client, PROMPTS[0])
        direct: list[tuple[float, int]] = []
        node: list[tuple[float, int]] = []
        for _ in range(args.rounds):
            for prompt in PROMPTS:
                direct.append(direct_run(llm, prompt, fmt))
                node.append(await node_run(client, prompt))
        await client.close()
    finally:
        node_process.stop()
    a, b = summarize(direct), summarize(node)
    result = {
        "benchmark": "node_overhead",
        "model": args.model,
        "prompt_format": fmt,
        "max_tokens": MAX_TOKENS,
        "threads": THREADS,
        "stream_interval_s": args.stream_interval
        if args.stream_interval is not None
        else "default",
        "llama_cpp_build": system_info().strip(),
        "a_direct_llama_cpp": a,
        "b_node_a2a_grpc": b,
        "ratio_tokens_per_s_b_over_a": round(b["tokens_per_s"] / a["tokens_per_s"], 3),
        "ratio_latency_p50_b_over_a": round(b["latency_p50_s"] / a["latency_p50_s"], 3),
        "target": "ratio_tokens_per_s_b_over_a >= 0.95",
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
