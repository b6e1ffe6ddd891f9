"""How many requests at once does the node serve, and how close to llama.cpp itself?
Same GGUF, threads, prompts and settings (temperature 0, max_tokens 128, 2048 tokens of
context per request) everywhere; N clients (1, 2, 4, 8, 16), each with its own fixed
prompts, send --requests streamed chat completions one after the other through the
official `openai` client (no retries):

  (a) a node (`consortium node start`, its own process) with `[model] parallel = N` (or
      --node-parallel), POST /v1/chat/completions, each client with its OWN API key
      (created with the node's key store, as `consortium keys create` does: a node caps
      what one caller may hold at once);
  (b) llama.cpp's own `llama-server --parallel N`, built by scripts/build-llama-server.sh
      from the llama.cpp source vendored in the pinned llama-cpp-python sdist, with the
      same CPU flags as the node's build (the anchor);
  (c) the node with `[model] parallel = 1`;
  ceiling: `llama-batched-bench` from the same build, N sequences of the prompts' median
      length decoding max_tokens each (no sampling, no HTTP).

Each server is started for its run alone (one at a time) and warmed with one request.
Per arm and client count: aggregate completion tokens/s (all completion tokens over the
wall time from the first request to the last answer), p50/p95 time to first token (the
first chunk with text), p50/p95 latency, errors by kind, and the peak resident set of
the serving process and its children (sampled). Ratios: a/b tokens/s at every client
count (targets >= 0.95 at 1, >= 0.9 at 8 and 16), p50 latency a/b at 8 (<= 1.2), a/c.

Two other modes, instead of the table:
  --soak SECONDS: 16 clients against the node (parallel 16) for SECONDS; the node's RSS
      every --sample-every seconds: first, last, max and the least-squares slope.
  --overload: 64 clients against a node with max_queue = 16: every request is answered or
      refused at once with HTTP 429 and Retry-After, none hanging (a request that takes
      longer than --timeout counts as hanging); counts and the slowest refusal.
  --flash-attention: llama-batched-bench's decode tokens/s at --clients sequences with
      flash attention on and off (why the node turns it on).

    .venv/bin/python benchmarks/concurrency.py [--clients 1,2,4,8,16] [--arms a,b,c,ceiling]
        [--requests 8] [--node-parallel N] [--plot FILE.png] [--soak 300] [--overload]
        [--flash-attention]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
from llama_server import free_port, serving
from openai import AsyncOpenAI
from openai_api import WARM_UP, messages, node_config, with_stream_interval
from overload import percentile

from consortium.launch.local import start_node
from consortium.llm.registry import BUNDLED, resolve_model_file
from consortium.node.config import load_config
from consortium.trust.api_keys import ApiKeys

ROOT = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = ROOT / "scripts" / "build-llama-server.sh"
CONTEXT = 2048  # per request (per slot)
THREADS = 2
CLIENTS = (1, 2, 4, 8, 16)
ARMS = {
    "a": "a_node_parallel_n",
    "b": "b_llama_server_parallel_n",
    "c": "c_node_parallel_1",
    "ceiling": "ceiling_llama_batched_bench",
}
# Every prompt asks for more than max_tokens of text, so most answers run to the limit.
PROMPTS = (
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how a bicycle works, step by step, for a curious child.",
    "Describe a busy market in a small coastal town on a summer morning.",
    "Explain why the sky is blue, in plain words, with an everyday example.",
    "Write a letter from a young sailor to his mother about his first voyage.",
    "Describe how bread is made, from the wheat field to the bakery shelf.",
    "Tell the story of a fox who learns to share food with the other animals.",
    "Explain how a rainbow forms after a summer storm.",
    "Write a diary entry of an astronaut on her first day aboard a space station.",
    "Describe a walk through an old forest in autumn, with its sounds and smells.",
    "Explain how bees make honey and why they matter to farmers.",
    "Write a short fable about a tortoise who wants to fly.",
    "Describe the life of a medieval blacksmith during one working day.",
    "Explain how a train stays on its tracks when it goes around a curve.",
    "Write a story about two friends who build a raft and sail down a river.",
    "Describe a winter night in a mountain village during a snowstorm.",
    "Explain how plants turn sunlight into food, for a ten year old.",
    "Write a speech a school principal gives on the first day of the school year.",
    "Describe the journey of a drop of water from the sea to the clouds and back.",
    "Tell a story about a robot that wants to learn how to paint.",
    "Explain how a library organizes its books so that readers can find them.",
    "Write a story about a lost puppy finding its way home through a big city.",
    "Describe how a volcano erupts and what happens to the land around it.",
    "Explain the rules of chess to someone who has never played a board game.",
    "Write a tale about a baker who discovers a magical recipe for bread.",
    "Describe a day in the life of a zookeeper who cares for elephants.",
    "Explain how a refrigerator keeps food cold, in simple terms.",
    "Write a story about a girl who finds a secret door in her grandmother's attic.",
    "Describe the sights and sounds of a harbour at sunrise.",
    "Explain how the moon changes its shape in the sky over a month.",
    "Write a story about an old clockmaker and the clock that would not stop.",
    "Describe how a small farm changes through the four seasons of the year.",
    "Explain how people navigated the seas before satellites and maps on phones.",
    "Write a story about a city where it rains every day except one.",
    "Describe a football match from the point of view of the goalkeeper.",
    "Explain how vaccines help the body fight an illness, for a curious teenager.",
    "Write a poem in prose about the first snow of the year.",
    "Describe how a letter travels from one country to another by post.",
    "Tell a story about a dragon who is afraid of the dark.",
    "Explain how a dam produces electricity from a river.",
)


@dataclass
class Outcome:
    """One request: `status` is "ok", an HTTP status code, "timeout", "connection" or
    "stream_error"."""

    status: str
    latency_s: float
    ttft_s: float | None = None
    completion_tokens: int = 0
    prompt_tokens: int | None = None
    retry_after: str | None = None


@dataclass
class Target:
    """A server under load: its OpenAI base URL, the model name it serves, the API key of
    each client, and the process whose memory is measured."""

    base_url: str
    model: str
    keys: list[str]
    pid: int
    extra: dict[str, Any] = field(default_factory=dict)


def prompt_for(client: int, request: int, clients: int) -> str:
    """Client `client`'s `request`-th prompt: the prompt list read in order, each round
    of requests handing the next `clients` prompts to the clients."""
    return PROMPTS[(request * clients + client) % len(PROMPTS)]


async def one_request(client: AsyncOpenAI, model: str, prompt: str, max_tokens: int) -> Outcome:
    started = time.perf_counter()
    ttft: float | None = None
    chunks = 0
    usage: tuple[int, int] | None = None
    try:
        stream = await client.chat.completions.create(
            model=model,
            messages=messages(prompt),
            max_tokens=max_tokens,
            temperature=0.0,
            stream=True,
            stream_options={"include_usage": True},
        )
        async for chunk in stream:
            if chunk.usage is not None:
                usage = (chunk.usage.completion_tokens, chunk.usage.prompt_tokens)
            for choice in chunk.choices:
                if choice.delta.content:
                    if ttft is None:
                        ttft = time.perf_counter() - started
                    chunks += 1
    except openai.APIStatusError as e:
        return Outcome(
            str(e.status_code),
            time.perf_counter() - started,
            retry_after=e.response.headers.get("retry-after"),
        )
    except openai.APITimeoutError:
        return Outcome("timeout", time.perf_counter() - started)
    except openai.APIConnectionError:
        return Outcome("connection", time.perf_counter() - started)
    except openai.APIError:  # an error event inside the stream
        return Outcome("stream_error", time.perf_counter() - started)
    latency = time.perf_counter() - started
    if usage is None:  # no usage chunk: one token a chunk (both servers stream so)
        return Outcome("ok", latency, ttft, chunks)
    return Outcome("ok", latency, ttft, usage[0], usage[1])


def open_clients(target: Target, timeout: float) -> list[AsyncOpenAI]:
    return [
        AsyncOpenAI(base_url=target.base_url, api_key=key, max_retries=0, timeout=timeout)
        for key in target.keys
    ]


async def drive(
    target: Target,
    clients: int,
    max_tokens: int,
    timeout: float,
    *,
    requests: int | None = None,
    until: float | None = None,
) -> tuple[list[Outcome], float]:
    """`clients` clients, each on its own key, sending one request after another:
    `requests` each, or until time.perf_counter() reaches `until`. Returns the outcomes
    and the wall time from the first request to the last answer."""
    sessions = open_clients(target, timeout)[:clients]
    if len(sessions) < clients:
        raise RuntimeError(f"{clients} clients but only {len(sessions)} API keys")

    async def client(k: int) -> list[Outcome]:
        done: list[Outcome] = []
        j = 0
        while (requests is None or j < requests) and (until is None or time.perf_counter() < until):
            done.append(
                await one_request(sessions[k], target.model, prompt_for(k, j, clients), max_tokens)
            )
            j += 1
        return done

    try:
        started = time.perf_counter()
        per_client = await asyncio.gather(*(client(k) for k in range(clients)))
        wall = time.perf_counter() - started
    finally:
        for s in sessions:
            await s.close()
    return [o for outcomes in per_client for o in outcomes], wall


def summarize(outcomes: list[Outcome], wall_s: float, peak_rss_mb: float) -> dict[str, Any]:
    ok = [o for o in outcomes if o.status == "ok"]
    ttfts = [o.ttft_s for o in ok if o.ttft_s is not None]
    latencies = [o.latency_s for o in ok]
    tokens = sum(o.completion_tokens for o in ok)
    return {
        "requests": len(outcomes),
        "ok": len(ok),
        "errors": dict(Counter(o.status for o in outcomes if o.status != "ok")),
        "completion_tokens": tokens,
        "wall_s": round(wall_s, 2),
        "tokens_per_s": round(tokens / wall_s, 2) if wall_s > 0 else 0.0,
        "ttft_p50_ms": _ms(percentile(ttfts, 0.5)) if ttfts else None,
        "ttft_p95_ms": _ms(percentile(ttfts, 0.95)) if ttfts else None,
        "latency_p50_s": round(percentile(latencies, 0.5), 3) if latencies else None,
        "latency_p95_s": round(percentile(latencies, 0.95), 3) if latencies else None,
        "peak_rss_mb": round(peak_rss_mb, 1),
    }


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


# --- memory ---------------------------------------------------------------------------

PAGE = os.sysconf("SC_PAGE_SIZE")


def tree_rss_mb(root: int) -> float:
    """Resident set of `root` and all its descendants, in MB (0 once it has exited)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    pages = 0
    stack = [root]
    while stack:
        pid = stack.pop()
        with contextlib.suppress(OSError, IndexError, ValueError):
            pages += int(Path(f"/proc/{pid}/statm").read_text().split()[1])
        stack.extend(children.get(pid, ()))
    return pages * PAGE / 2**20


class RssSampler:
    """Samples tree_rss_mb(pid) every `interval` seconds in a thread while the block runs
    (and once at each end)."""

    def __init__(self, pid: int, interval: float) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, float]] = []  # (seconds since start, MB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = 0.0

    def _sample(self) -> None:
        self.samples.append((time.perf_counter() - self._started, tree_rss_mb(self.pid)))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> RssSampler:
        self._started = time.perf_counter()
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def peak_mb(self) -> float:
        return max(mb for _, mb in self.samples)


def slope_per_minute(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB) samples, in MB per minute."""
    if len(samples) < 2:
        return 0.0
    xs = [t for t, _ in samples]
    ys = [mb for _, mb in samples]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return 0.0
    return 60 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx


# --- servers --------------------------------------------------------------------------


def llama_build(explicit: str | None) -> Path:
    """The directory holding llama-server and llama-batched-bench (built once, cached)."""
    if explicit:
        return Path(explicit)
    r = subprocess.run(
        ["bash", str(BUILD_SCRIPT), sys.executable], capture_output=True, text=True, check=False
    )
    if r.returncode != 0:
        raise RuntimeError(f"{BUILD_SCRIPT} failed: {r.stderr[-2000:]}")
    return Path(r.stdout.strip().splitlines()[-1])


def client_keys(config: Path, n: int) -> list[str]:
    """`n` API keys for the node of `config`, one a client (each its own caller)."""
    cfg = load_config(config)
    keys = ApiKeys(cfg.api_keys_path)
    try:
        return [keys.create(f"bench-client-{i}")[1] for i in range(n)]
    finally:
        keys.close()


@contextlib.contextmanager
def node_target(
    workdir: Path, model: str, args: argparse.Namespace, *, parallel: int, max_queue: int, keys: int
) -> Iterator[Target]:
    """A node on the model with `parallel` and `max_queue`, and `keys` client keys."""
    model_lines = f"threads = {args.threads}\nparallel = {parallel}\nmax_queue = {max_queue}"
    config = node_config(
        workdir,
        "bench",
        model,
        args.max_tokens,
        **with_stream_interval({r"^threads = 0.*$": model_lines}, args.stream_interval),
    )
    tokens = client_keys(config, keys)
    child, http_url = start_node(config, workdir / "node.log")
    try:
        yield Target(
            f"{http_url.rstrip('/')}/v1",
            model,
            tokens,
            child.process.pid,
            {"parallel": parallel, "max_queue": max_queue},
        )
    finally:
        child.stop()


@contextlib.contextmanager
def llama_server_target(
    binaries: Path, path: Path, model: str, args: argparse.Namespace, *, parallel: int, keys: int
) -> Iterator[Target]:
    """llama-server with `parallel` slots of CONTEXT tokens each: --ctx-size is the whole
    KV cache, shared out among the slots (each gets ctx-size / parallel with the
    non-unified cache, which is what an explicit --parallel chooses, spelled out here)."""
    port = free_port()
    cmd = [
        str(binaries / "llama-server"),
        *("--model", str(path), "--alias", model),
        *("--host", "127.0.0.1", "--port", str(port)),
        *("--parallel", str(parallel), "--ctx-size", str(parallel * CONTEXT), "--no-kv-unified"),
        *("--threads", str(args.threads), "--threads-batch", str(args.threads)),
        *args.server_arg,
    ]
    base_url = f"http://127.0.0.1:{port}/v1"
    with serving("llama-server", cmd, base_url) as child:
        yield Target(
            base_url,
            model,
            ["unused"] * keys,
            child.process.pid,
            {"parallel": parallel, "ctx_size": parallel * CONTEXT, "args": cmd[1:]},
        )


def warm(target: Target, max_tokens: int, timeout: float) -> None:
    async def go() -> None:
        async with AsyncOpenAI(
            base_url=target.base_url, api_key=target.keys[0], max_retries=0, timeout=timeout
        ) as client:
            listed = [m.id for m in (await client.models.list()).data]
            if target.model not in listed:
                raise RuntimeError(f"{target.base_url}/models lists {listed}, not {target.model}")
            outcome = await one_request(client, target.model, WARM_UP, max_tokens)
            if outcome.status != "ok":
                raise RuntimeError(f"warm-up request to {target.base_url} failed: {outcome}")

    asyncio.run(go())


def measure(
    target: Target, clients: int, args: argparse.Namespace
) -> tuple[dict[str, Any], list[Outcome]]:
    warm(target, args.max_tokens, args.timeout)
    load_before = os.getloadavg()[0]
    with RssSampler(target.pid, 0.25) as rss:
        outcomes, wall = asyncio.run(
            drive(target, clients, args.max_tokens, args.timeout, requests=args.requests)
        )
    summary = summarize(outcomes, wall, rss.peak_mb)
    summary["load_average_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    summary["server"] = target.extra
    return summary, outcomes


# --- ceiling --------------------------------------------------------------------------


def parse_batched_bench(output: str) -> dict[int, dict[str, float]]:
    """llama-batched-bench's JSONL lines (--output-format jsonl), by sequence count: its
    decode tokens/s (speed_tg: B x TG / T_TG) and the completion tokens/s over the whole
    run, prompt included (B x TG / T), comparable with the arms' aggregate figure."""
    rows: dict[int, dict[str, float]] = {}
    for line in output.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(row, dict) or not {"pl", "pp", "tg", "t", "speed_tg"} <= row.keys():
            continue
        pl, tg, t = int(row["pl"]), int(row["tg"]), float(row["t"])
        rows[pl] = {
            "prompt_tokens": int(row["pp"]),
            "completion_tokens": pl * tg,
            "decode_tokens_per_s": round(float(row["speed_tg"]), 2),
            "tokens_per_s": round(pl * tg / t, 2) if t > 0 else 0.0,
            "prefill_s": round(float(row["t_pp"]), 3) if "t_pp" in row else 0.0,
        }
    return rows


def ceiling(
    binaries: Path,
    path: Path,
    clients: list[int],
    prompt_tokens: int,
    args: argparse.Namespace,
    extra: tuple[str, ...] = (),
) -> dict[str, Any]:
    cmd = [
        str(binaries / "llama-batched-bench"),
        *("--model", str(path), "--ctx-size", str(max(clients) * CONTEXT), "--no-kv-unified"),
        *("-npp", str(prompt_tokens), "-ntg", str(args.max_tokens)),
        *("-npl", ",".join(map(str, clients))),
        *("--threads", str(args.threads), "--threads-batch", str(args.threads)),
        *("--output-format", "jsonl"),
        *extra,
    ]
    load_before = os.getloadavg()[0]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=3600)
    if r.returncode != 0:
        raise RuntimeError(f"llama-batched-bench failed: {r.stderr[-2000:]}")
    rows = parse_batched_bench(r.stdout + "\n" + r.stderr)
    missing = set(clients) - rows.keys()
    if missing:
        raise RuntimeError(f"llama-batched-bench printed no row for {sorted(missing)}")
    return {
        "args": cmd[1:],
        "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        **{str(n): rows[n] for n in clients},
    }


# --- modes ----------------------------------------------------------------------------


def flash_attention(args: argparse.Namespace, path: Path, clients: list[int]) -> dict[str, Any]:
    """llama.cpp's decode speed with flash attention on and off (the node runs it on, as
    llama-server does; llama-cpp-python's Llama() turns it off): llama-batched-bench from
    the same build, the same kernels the node calls in-process, alternating on, off, on,
    off so a drift of the machine's speed falls on both."""
    binaries = llama_build(args.llama_bin)
    pp = args.ceiling_prompt_tokens
    runs: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
    for _ in range(2):
        for mode in ("on", "off"):
            runs[mode].append(ceiling(binaries, path, clients, pp, args, ("--flash-attn", mode)))

    def best(mode: str, n: int) -> float:
        return max(float(r[str(n)]["decode_tokens_per_s"]) for r in runs[mode])

    return {
        "mode": "flash_attention",
        "prompt_tokens": pp,
        "runs": runs,
        "decode_tokens_per_s_on": {str(n): best("on", n) for n in clients},
        "decode_tokens_per_s_off": {str(n): best("off", n) for n in clients},
        "ratio_decode_tokens_per_s_on_over_off": {
            str(n): round(best("on", n) / best("off", n), 3) for n in clients
        },
    }


def table(
    args: argparse.Namespace, path: Path, arms: list[str], clients: list[int]
) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="consortium-bench-concurrency-"))
    binaries = llama_build(args.llama_bin) if {"b", "ceiling"} & set(arms) else None
    result: dict[str, Any] = {ARMS[a]: {} for a in arms}
    prompt_tokens: list[int] = []
    for n in clients:
        for arm in (a for a in ("b", "a", "c") if a in arms):
            name = f"{arm}-{n}"
            if arm == "b":
                assert binaries is not None
                server: contextlib.AbstractContextManager[Target] = llama_server_target(
                    binaries, path, args.model, args, parallel=n, keys=n
                )
            else:
                parallel = 1 if arm == "c" else args.node_parallel or n
                server = node_target(
                    base / name, args.model, args, parallel=parallel, max_queue=64, keys=n
                )
            with server as target:
                summary, outcomes = measure(target, n, args)
            prompt_tokens += [o.prompt_tokens for o in outcomes if o.prompt_tokens]
            result[ARMS[arm]][str(n)] = summary
            # Progress, and the figures so far should a long run be cut short.
            print(json.dumps({ARMS[arm]: {str(n): summary}}), file=sys.stderr, flush=True)
    if "ceiling" in arms:
        assert binaries is not None
        pp = int(statistics.median(prompt_tokens)) if prompt_tokens else args.ceiling_prompt_tokens
        result[ARMS["ceiling"]] = ceiling(binaries, path, clients, pp, args)
    result.update(ratios(result, clients))
    return result


def ratios(result: dict[str, Any], clients: list[int]) -> dict[str, Any]:
    a, b, c = (result.get(ARMS[x], {}) for x in ("a", "b", "c"))
    top = result.get(ARMS["ceiling"], {})
    out: dict[str, Any] = {}

    def per_n(x: dict[str, Any], y: dict[str, Any], key: str = "tokens_per_s") -> dict[str, Any]:
        return {
            str(n): _ratio(x[str(n)][key], y[str(n)][key])
            for n in clients
            if str(n) in x and str(n) in y
        }

    if a and b:
        out["ratio_tokens_per_s_a_over_b"] = per_n(a, b)
        out["ratio_latency_p50_a_over_b"] = per_n(a, b, "latency_p50_s")
    if a and c:
        out["ratio_tokens_per_s_a_over_c"] = per_n(a, c)
    for name, arm in (("a", a), ("b", b), ("c", c)):
        if arm and top:
            out[f"ratio_tokens_per_s_{name}_over_ceiling"] = per_n(arm, top)
    out["targets"] = {
        "ratio_tokens_per_s_a_over_b": {"1": ">= 0.95", "8": ">= 0.9", "16": ">= 0.9"},
        "ratio_latency_p50_a_over_b": {"8": "<= 1.2"},
        "errors": "none in any arm",
    }
    if a and b:
        met = {}
        for n, bound in (("1", 0.95), ("8", 0.9), ("16", 0.9)):
            r = out["ratio_tokens_per_s_a_over_b"].get(n)
            if r is not None:
                met[f"tokens_per_s_a_over_b_at_{n}"] = r >= bound
        lat = out["ratio_latency_p50_a_over_b"].get("8")
        if lat is not None:
            met["latency_p50_a_over_b_at_8"] = lat <= 1.2
        out["targets_met"] = met
    return out


def _ratio(x: float | None, y: float | None) -> float | None:
    return round(x / y, 3) if x is not None and y else None


def soak(args: argparse.Namespace, seconds: float) -> dict[str, Any]:
    clients = max(parse_list(args.clients))
    parallel = args.node_parallel or clients
    workdir = Path(tempfile.mkdtemp(prefix="consortium-bench-soak-"))
    with node_target(
        workdir, args.model, args, parallel=parallel, max_queue=64, keys=clients
    ) as target:
        warm(target, args.max_tokens, args.timeout)
        with RssSampler(target.pid, args.sample_every) as rss:
            until = time.perf_counter() + seconds
            outcomes, wall = asyncio.run(
                drive(target, clients, args.max_tokens, args.timeout, until=until)
            )
    mbs = [mb for _, mb in rss.samples]
    return {
        "mode": "soak",
        "seconds": seconds,
        "clients": clients,
        "node_parallel": parallel,
        **summarize(outcomes, wall, rss.peak_mb),
        "rss_samples": len(mbs),
        "rss_every_s": args.sample_every,
        "rss_first_mb": round(mbs[0], 1),
        "rss_last_mb": round(mbs[-1], 1),
        "rss_max_mb": round(max(mbs), 1),
        "rss_slope_mb_per_min": round(slope_per_minute(rss.samples), 3),
        "target": "RSS flat: slope ~0 and last close to first; no errors",
    }


def overload(args: argparse.Namespace) -> dict[str, Any]:
    clients = args.overload_clients
    workdir = Path(tempfile.mkdtemp(prefix="consortium-bench-overload-"))
    with node_target(
        workdir,
        args.model,
        args,
        parallel=args.node_parallel,
        max_queue=args.overload_queue,
        keys=clients,
    ) as target:
        warm(target, args.max_tokens, args.timeout)
        outcomes, wall = asyncio.run(
            drive(target, clients, args.max_tokens, args.timeout, requests=args.overload_requests)
        )
    refused = [o for o in outcomes if o.status == "429"]
    answered = [o for o in outcomes if o.status == "ok"]
    return {
        "mode": "overload",
        "clients": clients,
        "requests_per_client": args.overload_requests,
        "node_parallel": args.node_parallel,
        "node_max_queue": args.overload_queue,
        "requests": len(outcomes),
        "answered": len(answered),
        "refused_429": len(refused),
        "refused_429_without_retry_after": sum(1 for o in refused if not o.retry_after),
        "hanging": sum(1 for o in outcomes if o.status == "timeout"),
        "other_errors": dict(
            Counter(o.status for o in outcomes if o.status not in ("ok", "429", "timeout"))
        ),
        "slowest_refusal_s": round(max(o.latency_s for o in refused), 3) if refused else None,
        "refusal_p50_s": round(percentile([o.latency_s for o in refused], 0.5), 3)
        if refused
        else None,
        "slowest_answer_s": round(max(o.latency_s for o in answered), 3) if answered else None,
        "wall_s": round(wall, 2),
        "timeout_s": args.timeout,
        "target": "answered + refused_429 == requests; no refusal without Retry-After; "
        "refusals at once",
    }


def plot(result: dict[str, Any], clients: list[int], path: Path) -> Path:
    """Aggregate completion tokens/s against clients: each arm, and the ceiling."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    for arm, style in (("a", "o-"), ("b", "s-"), ("c", "^-"), ("ceiling", "k:")):
        figures = result.get(ARMS[arm], {})
        xs = [n for n in clients if str(n) in figures]
        if xs:
            ys = [figures[str(n)]["tokens_per_s"] for n in xs]
            ax.plot(xs, ys, style, label=ARMS[arm], linewidth=1.2)
    ax.set_xscale("log", base=2)
    ax.set_xticks(clients, [str(n) for n in clients])
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("aggregate completion tokens/s")
    ax.set_title(
        f"{result['model']}, {result['threads']} threads, max_tokens {result['max_tokens']}"
    )
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def parse_list(text: str) -> list[int]:
    values = sorted({int(x) for x in text.split(",") if x.strip()})
    if not values or values[0] < 1:
        raise ValueError(text)
    return values


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m", help="a bundled chat model")
    parser.add_argument("--clients", default=",".join(map(str, CLIENTS)))
    parser.add_argument("--arms", default=",".join(ARMS), help="subset of a,b,c,ceiling")
    parser.add_argument("--requests", type=int, default=8, help="requests per client")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=THREADS)
    parser.add_argument(
        "--node-parallel", type=int, default=0, help="(a)'s [model] parallel (0: = clients)"
    )
    parser.add_argument(
        "--stream-interval", type=float, default=None, help="nodes' stream_interval_s"
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds a request may take")
    parser.add_argument("--llama-bin", default=None, help="directory of llama-server (else build)")
    parser.add_argument(
        "--server-arg", action="append", default=[], help="extra llama-server argument"
    )
    parser.add_argument(
        "--ceiling-prompt-tokens", type=int, default=64, help="if no arm reported prompt tokens"
    )
    parser.add_argument("--plot", type=Path, default=None, help="PNG of tokens/s vs clients")
    parser.add_argument("--soak", type=float, default=None, metavar="SECONDS")
    parser.add_argument("--sample-every", type=float, default=5.0, help="soak: RSS interval (s)")
    parser.add_argument("--overload", action="store_true")
    parser.add_argument(
        "--flash-attention", action="store_true", help="decode speed with it on and off"
    )
    parser.add_argument("--overload-clients", type=int, default=64)
    parser.add_argument("--overload-queue", type=int, default=16)
    parser.add_argument("--overload-requests", type=int, default=2, help="per client")
    args = parser.parse_args()
    try:
        clients = parse_list(args.clients)
    except ValueError:
        parser.error("--clients: comma-separated positive integers")
    arms = [a for a in ARMS if a in set(args.arms.split(","))]
    if not arms or set(args.arms.split(",")) - set(ARMS):
        parser.error(f"--arms: a comma-separated subset of {','.join(ARMS)}")
    if args.requests < 1 or args.max_tokens < 1 or args.threads < 1:
        parser.error("--requests, --max-tokens and --threads must be positive")
    if BUNDLED[args.model].prompt_format != "chat":
        parser.error(f"--model: {args.model} is not a chat model")

    path = resolve_model_file(args.model, None)
    header: dict[str, Any] = {
        "benchmark": "concurrency",
        "model": args.model,
        "max_tokens": args.max_tokens,
        "context_per_request": CONTEXT,
        "threads": args.threads,
        "prompts": len(PROMPTS),
        "cpus": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    if args.soak is not None or args.overload or args.flash_attention:
        modes: dict[str, Any] = {}
        if args.flash_attention:
            modes["flash_attention"] = flash_attention(args, path, clients)
        if args.soak is not None:
            modes["soak"] = soak(args, args.soak)
        if args.overload:
            modes["overload"] = overload(args)
        print(json.dumps({**header, **modes}, indent=2))
        return
    header.update(
        {
            "clients": clients,
            "arms": arms,
            "requests_per_client": args.requests,
            "node_parallel": args.node_parallel or "= clients",
        }
    )
    result = {**header, **table(args, path, arms, clients)}
    if args.plot is not None:
        result["plot"] = str(plot(result, clients, args.plot))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
