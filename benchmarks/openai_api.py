"""What does the node's OpenAI-compatible API cost? Same chat model, prompts and settings
(temperature 0, n_ctx 2048, 2 threads), every request streamed:

  (a) llama-cpp-python called directly, in this process (create_chat_completion);
  (b) a node (`consortium node start`, its own process) through its OpenAI endpoint,
      POST /v1/chat/completions with the official `openai` client, stream_options
      include_usage, authenticated with the owner's API key that `init` wrote;
  (c) llama-cpp-python's own OpenAI server (`python -m llama_cpp.server`, its own
      process), through the same client and the same streaming;
  (d) a second node whose model is the remote backend (`backend = "openai"`) on server
      (c), through its OpenAI endpoint: compared with (c) called directly, what the node
      adds in front of a model server.

Requests alternate a, b, c, d, a, b, ... (one at a time: only one model decodes at once)
so drift on a shared machine hits all arms alike; (d) runs each prompt a step after (c)
so that it never finds the server's KV cache holding the prompt (c) just sent. Prints
one JSON object, per arm: time to first token (TTFT: the first chunk with text),
end-to-end tokens/s (completion tokens / whole request) and decode tokens/s (tokens
after the first / time after the first); and the ratios: b/a tokens/s (target >= 0.95),
b/c tokens/s (target >= 1.0), TTFT b - a p50 (target <= 50 ms), d/c latency and TTFT
d - c.

Completion tokens are the server's usage when the stream reports it (b, d); else (a, c:
llama-cpp-python streams no usage) the answer's text tokenized by the model. (c) and (d)
send what an OpenAI client sends, so llama_cpp.server applies its own default sampling
(repeat_penalty 1.1): their texts may differ from (a) and (b), which share one greedy
decode.

    .venv/bin/python benchmarks/openai_api.py [--model smollm2-135m] [--rounds 3]
        [--max-tokens 128] [--arms a,b,c,d] [--stream-interval S]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llama_server import llama_server
from openai import OpenAI
from openai.types.chat import ChatCompletionMessageParam

from consortium.launch.local import start_node
from consortium.llm.llama_cpp_backend import system_info
from consortium.llm.registry import BUNDLED, resolve_model_file
from consortium.llm.settings import DEFAULT_SYSTEM_PROMPT
from consortium.node.setup import API_KEY_FILE, init_node

PROMPTS = (
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how a bicycle works, step by step, for a curious child.",
    "Describe a busy market in a small coastal town on a summer morning.",
)
WARM_UP = "Say hello."
CONTEXT = 2048
THREADS = 2
ARMS = {
    "a": "a_direct_llama_cpp",
    "b": "b_node_openai",
    "c": "c_llama_cpp_server",
    "d": "d_node_remote_backend",
}


@dataclass
class Sample:
    latency_s: float
    ttft_s: float
    tokens: int
    text: str


Run = Callable[[str], Sample]


def messages(prompt: str) -> list[ChatCompletionMessageParam]:
    return [
        {"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
        {"role": "user", "content": prompt},
    ]


class Tokens:
    """Counts an answer's tokens with the model's own tokenizer (vocabulary only)."""

    def __init__(self, path: Path) -> None:
        from llama_cpp import Llama

        self._vocab = Llama(str(path), vocab_only=True, verbose=False)

    def __call__(self, text: str) -> int:
        return len(self._vocab.tokenize(text.encode(), add_bos=False, special=False))


def direct_arm(llm: Any, count: Tokens, max_tokens: int) -> Run:
    def run(prompt: str) -> Sample:
        started = time.perf_counter()
        ttft = 0.0
        parts: list[str] = []
        for chunk in llm.create_chat_completion(
            messages=messages(prompt), max_tokens=max_tokens, temperature=0.0, stream=True
        ):
            content = chunk["choices"][0]["delta"].get("content") if chunk["choices"] else None
            if content:
                if not parts:
                    ttft = time.perf_counter() - started
                parts.append(content)
        text = "".join(parts)
        return Sample(time.perf_counter() - started, ttft, count(text), text)

    return run


def openai_arm(client: OpenAI, model: str, count: Tokens, max_tokens: int) -> Run:
    def run(prompt: str) -> Sample:
        started = time.perf_counter()
        ttft = 0.0
        parts: list[str] = []
        usage: int | None = None
        stream = client.chat.completions.create(
            model=model,
            messages=messages(prompt),
            max_tokens=max_tokens,
            temperature=0.0,
            stream=True,
            stream_options={"include_usage": True},
        )
        for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage.completion_tokens
            for choice in chunk.choices:
                if choice.delta.content:
                    if not parts:
                        ttft = time.perf_counter() - started
                    parts.append(choice.delta.content)
        latency = time.perf_counter() - started
        text = "".join(parts)
        return Sample(latency, ttft, usage if usage is not None else count(text), text)

    return run


def shifted(arm: str, arms: list[str], i: int) -> int:
    """The prompt `arm` answers at step `i`. (c) and (d) share one server, which reuses
    the KV cache of the prompt it saw last: were (d) to follow (c) on the same prompt, it
    would skip the prefill (c) did. So (d) answers the previous step's prompt: every
    request follows a different one, as in the other arms (which share at most the
    system prompt with the request before)."""
    return (i - 1) % len(PROMPTS) if arm == "d" and "c" in arms else i


def summarize(samples: list[Sample]) -> dict[str, float]:
    latencies = [s.latency_s for s in samples]
    ttfts = [s.ttft_s for s in samples]
    tokens = sum(s.tokens for s in samples)
    decode_s = sum(s.latency_s - s.ttft_s for s in samples)
    decode_tokens = sum(max(s.tokens - 1, 0) for s in samples)
    return {
        "requests": len(samples),
        "output_tokens": tokens,
        "tokens_per_s": round(tokens / sum(latencies), 2),
        "decode_tokens_per_s": round(decode_tokens / decode_s, 2) if decode_s > 0 else 0.0,
        "ttft_p50_ms": round(statistics.median(ttfts) * 1000, 1),
        "ttft_mean_ms": round(statistics.fmean(ttfts) * 1000, 1),
        "latency_p50_s": round(statistics.median(latencies), 4),
        "latency_mean_s": round(statistics.fmean(latencies), 4),
    }


def node_config(workdir: Path, org: str, model: str, max_tokens: int, **edits: str) -> Path:
    """A node directory from `init`, with the benchmark's settings written into node.toml."""
    init_node(org, workdir, model=model, grpc_port=0, http_port=0)
    config = workdir / "node.toml"
    text = config.read_text()
    text = re.sub(r"(?m)^max_tokens = \d+", f"max_tokens = {max_tokens}", text)
    for pattern, replacement in edits.items():
        text, n = re.subn(pattern, replacement, text, count=1, flags=re.MULTILINE)
        if n != 1:
            raise RuntimeError(f"{config}: no line matches {pattern!r}")
    config.write_text(text)
    return config


def with_stream_interval(edits: dict[str, str], interval: float | None) -> dict[str, str]:
    if interval is not None:
        edits[r"^stream_interval_s = \S+"] = f"stream_interval_s = {interval}"
    return edits


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m", help="a bundled chat model")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument(
        "--arms", default="a,b,c,d", help="comma-separated subset of a, b, c, d (see above)"
    )
    parser.add_argument(
        "--stream-interval", type=float, default=None, help="server.stream_interval_s of nodes"
    )
    args = parser.parse_args()
    arms = sorted(set(args.arms.split(",")))
    if not arms or any(a not in ARMS for a in arms):
        parser.error(f"--arms: a comma-separated subset of {','.join(ARMS)}")
    if BUNDLED[args.model].prompt_format != "chat":
        parser.error(f"--model: {args.model} is not a chat model")

    path = resolve_model_file(args.model, None)
    count = Tokens(path)
    runs: dict[str, Run] = {}
    base = Path(tempfile.mkdtemp(prefix="consortium-bench-openai-"))
    with contextlib.ExitStack() as stack:
        if "a" in arms:
            from llama_cpp import Llama

            llm = Llama(
                str(path),
                n_ctx=CONTEXT,
                n_threads=THREADS,
                n_threads_batch=THREADS,
                flash_attn=True,  # as the node's backend runs (llama.cpp's default)
                verbose=False,
            )
            runs["a"] = direct_arm(llm, count, args.max_tokens)
        if "b" in arms:
            config = node_config(
                base / "node",
                "bench",
                args.model,
                args.max_tokens,
                **with_stream_interval(
                    {r"^threads = 0": f"threads = {THREADS}"}, args.stream_interval
                ),
            )
            runs["b"] = node_arm(stack, config, args.model, args.max_tokens, count)
        if "c" in arms or "d" in arms:
            server_url = stack.enter_context(
                llama_server(
                    path,
                    n_ctx=CONTEXT,
                    n_threads=THREADS,
                    model_alias=args.model,
                    extra_args=("--flash_attn", "True"),
                )
            )
            server = stack.enter_context(OpenAI(base_url=server_url, api_key="unused"))
            served = server.models.list().data[0].id
            if "c" in arms:
                runs["c"] = openai_arm(server, served, count, args.max_tokens)
            if "d" in arms:
                config = node_config(
                    base / "remote",
                    "remote",
                    args.model,
                    args.max_tokens,
                    **with_stream_interval(
                        {
                            r"^backend = \"llama_cpp\".*$": (
                                f'backend = "openai"\nbase_url = "{server_url}"'
                            ),
                            r"^name = .*$": f"name = {json.dumps(served)}",
                        },
                        args.stream_interval,
                    ),
                )
                runs["d"] = node_arm(stack, config, served, args.max_tokens, count)
        for arm in arms:  # warm every path (page cache, first-call allocations)
            runs[arm](WARM_UP)
        by_prompt: dict[str, dict[tuple[int, int], Sample]] = {arm: {} for arm in arms}
        for r in range(args.rounds):
            for i in range(len(PROMPTS)):
                for arm in arms:
                    p = shifted(arm, arms, i)
                    by_prompt[arm][r, p] = runs[arm](PROMPTS[p])
        samples = {arm: [by_prompt[arm][k] for k in sorted(by_prompt[arm])] for arm in arms}

    result: dict[str, Any] = {
        "benchmark": "openai_api",
        "model": args.model,
        "max_tokens": args.max_tokens,
        "n_ctx": CONTEXT,
        "threads": THREADS,
        "rounds": args.rounds,
        "arms": arms,
        "stream_interval_s": "default" if args.stream_interval is None else args.stream_interval,
        "llama_cpp_build": system_info().strip(),
    }
    s = {arm: summarize(samples[arm]) for arm in arms}
    for arm in arms:
        result[ARMS[arm]] = s[arm]
    if "a" in s and "b" in s:
        result["same_text_a_b"] = [x.text for x in samples["a"]] == [x.text for x in samples["b"]]
        result["ratio_tokens_per_s_b_over_a"] = _ratio(s["b"], s["a"], "tokens_per_s")
        result["ratio_decode_tokens_per_s_b_over_a"] = _ratio(s["b"], s["a"], "decode_tokens_per_s")
        result["ttft_overhead_b_minus_a_p50_ms"] = round(
            s["b"]["ttft_p50_ms"] - s["a"]["ttft_p50_ms"], 1
        )
    if "b" in s and "c" in s:
        result["ratio_tokens_per_s_b_over_c"] = _ratio(s["b"], s["c"], "tokens_per_s")
        result["ratio_decode_tokens_per_s_b_over_c"] = _ratio(s["b"], s["c"], "decode_tokens_per_s")
    if "a" in s and "c" in s:
        result["ratio_tokens_per_s_c_over_a"] = _ratio(s["c"], s["a"], "tokens_per_s")
        result["ttft_c_minus_a_p50_ms"] = round(s["c"]["ttft_p50_ms"] - s["a"]["ttft_p50_ms"], 1)
    if "c" in s and "d" in s:
        result["same_text_c_d"] = [x.text for x in samples["c"]] == [x.text for x in samples["d"]]
        result["ratio_latency_p50_d_over_c"] = _ratio(s["d"], s["c"], "latency_p50_s")
        result["ratio_tokens_per_s_d_over_c"] = _ratio(s["d"], s["c"], "tokens_per_s")
        result["ttft_overhead_d_minus_c_p50_ms"] = round(
            s["d"]["ttft_p50_ms"] - s["c"]["ttft_p50_ms"], 1
        )
    result["targets"] = {
        "ratio_tokens_per_s_b_over_a": ">= 0.95",
        "ratio_tokens_per_s_b_over_c": ">= 1.0",
        "ttft_overhead_b_minus_a_p50_ms": "<= 50",
    }
    print(json.dumps(result, indent=2))


def node_arm(
    stack: contextlib.ExitStack, config: Path, model: str, max_tokens: int, count: Tokens
) -> Run:
    """Starts the node on `config` (stopped when `stack` closes); the arm that calls its
    OpenAI endpoint as the owner, on the node's own model (which /v1/models must list)."""
    process, http_url = start_node(config, config.parent / "node.log")
    stack.callback(process.stop)
    key = (config.parent / API_KEY_FILE).read_text().strip()
    client = stack.enter_context(OpenAI(base_url=f"{http_url.rstrip('/')}/v1", api_key=key))
    listed = [m.id for m in client.models.list().data]
    if model not in listed:
        raise RuntimeError(f"{http_url}/v1/models lists {listed}, not the node's {model!r}")
    return openai_arm(client, model, count, max_tokens)


def _ratio(x: dict[str, float], y: dict[str, float], key: str) -> float:
    return round(x[key] / y[key], 3) if y[key] else 0.0


if __name__ == "__main__":
    main()
