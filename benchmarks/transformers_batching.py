"""Does the transformers backend gain from batching several requests into one generate?

The bundled SmolLM2-135M GGUF loaded through transformers (`from_pretrained(gguf_file=)`,
as the backend and its tests load it), eight different chat prompts, 64 new tokens,
greedy, measured four ways in one run:

  sequential   one request at a time through the backend's own path (`stream_chat`:
               the shared decode loop over the model's KV cache), the baseline;
  generate_1   one at a time through transformers' `generate` (separates the decode
               loop's cost from batching's gain);
  batch_2, batch_4, batch_8   2, 4 or 8 prompts at a time in one padding-aware
               `generate` (left padding, attention mask);
  backend_parallel_4, backend_parallel_8   the backend with `parallel` = 4 or 8, the
               eight requests sent from eight threads at once, as the node's worker
               does: its own static batching (llm/transformers_batch.py).

The `generate` rows generate their full 64 tokens (`min_new_tokens`); the backend's
paths stop at the end-of-sequence token as a node does. Tokens/s is the total generated
tokens over the wall time. Also reports how many of the
batched greedy answers begin with the sequential answer's text (the same greedy tokens
until the sequential one ended).

Prints one JSON object: tokens/s per way and each one's ratio to `sequential`.

    .venv/bin/python benchmarks/transformers_batching.py [--threads 1] [--rounds 2]

One torch thread by default: on a machine whose cores other processes also use, torch's
OpenMP threads spin waiting for each other at every step and single-row steps slow down
far more than batched ones, which would flatter batching.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from consortium.llm.base import ChatMessage, Completion, GenerationParams
from consortium.llm.registry import resolve_model_file
from consortium.llm.transformers_backend import TransformersBackend

PROMPTS = (
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Tell a short story about a robot learning to bake bread.",
    "Write a short story about two friends lost in a snowy forest.",
    "Tell a short story about a cat who becomes the mayor of a small town.",
    "Write a short story about a girl who can talk to the wind.",
    "Tell a short story about an old clock that runs backwards.",
    "Write a short story about a fisherman and a golden fish.",
    "Tell a short story about a dragon afraid of the dark.",
)
# New tokens per answer (--new-tokens; the test of this script runs it with a few).
NEW_TOKENS = 64


def answer(backend: TransformersBackend, prompt: str) -> Completion:
    gen = backend.stream_chat(
        [ChatMessage("user", prompt)],
        GenerationParams(max_tokens=NEW_TOKENS, temperature=0.0),
        threading.Event(),
    )
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            done: Completion = stop.value
            return done


def sequential(backend: TransformersBackend) -> tuple[float, int, list[str]]:
    """The backend's own path, one prompt after the other: (seconds, tokens, texts)."""
    started = time.perf_counter()
    answers = [answer(backend, p) for p in PROMPTS]
    seconds = time.perf_counter() - started
    return seconds, sum(a.usage.output_tokens for a in answers), [a.text for a in answers]


def concurrent(backend: TransformersBackend) -> tuple[float, int, list[str]]:
    """The backend with `parallel` > 1, every prompt sent at once from its own thread."""
    started = time.perf_counter()
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        answers = list(pool.map(lambda p: answer(backend, p), PROMPTS))
    seconds = time.perf_counter() - started
    return seconds, sum(a.usage.output_tokens for a in answers), [a.text for a in answers]


def batched(backend: TransformersBackend, size: int) -> tuple[float, int, list[str]]:
    """`size` prompts at a time in one left-padded `generate`: (seconds, tokens, texts)."""
    import torch

    tok, model = backend._tok, backend._model
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    eos = sorted(backend._eos)
    chats = [
        tok.apply_chat_template(
            [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False
        )
        for p in PROMPTS
    ]
    started = time.perf_counter()
    tokens, texts = 0, []
    for at in range(0, len(chats), size):
        enc = tok(
            chats[at : at + size], return_tensors="pt", padding=True, add_special_tokens=False
        )
        with torch.no_grad():
            out = model.generate(
                **enc,
                max_new_tokens=NEW_TOKENS,
                min_new_tokens=NEW_TOKENS,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
                eos_token_id=eos,
            )
        new = out[:, enc["input_ids"].shape[1] :]
        for row in new.tolist():
            cut = next((i for i, t in enumerate(row) if t in backend._eos), len(row))
            texts.append(str(tok.decode(row[:cut], skip_special_tokens=True)))
        tokens += int(new.numel())
    return time.perf_counter() - started, tokens, texts


def main(argv: list[str]) -> dict[str, Any]:
    global NEW_TOKENS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=NEW_TOKENS)
    args = parser.parse_args(argv)
    NEW_TOKENS = args.new_tokens
    gguf = resolve_model_file("smollm2-135m", None)
    backend, four, eight = (
        TransformersBackend(
            Path(gguf.parent),
            name="smollm2-135m-hf",
            gguf_file=gguf.name,
            threads=args.threads,
            parallel=parallel,
        )
        for parallel in (1, 4, 8)
    )
    # Warm-up: first calls allocate and pick kernels.
    batched(backend, 8)
    # The sequential path stops at the end-of-sequence token; the others are forced to 64
    # tokens. Tokens/s counts what each generated.
    ways: dict[str, Any] = {
        "sequential": lambda: sequential(backend),
        "generate_1": lambda: batched(backend, 1),
        "batch_2": lambda: batched(backend, 2),
        "batch_4": lambda: batched(backend, 4),
        "batch_8": lambda: batched(backend, 8),
        "backend_parallel_4": lambda: concurrent(four),
        "backend_parallel_8": lambda: concurrent(eight),
    }
    best: dict[str, float] = {}
    tokens: dict[str, int] = {}
    texts: dict[str, list[str]] = {}
    for _ in range(args.rounds):  # alternating, so drift hits every way alike
        for name, run in ways.items():
            seconds, n, t = run()
            rate = n / seconds
            print(f"{name}: {n} tokens in {seconds:.1f} s", file=sys.stderr, flush=True)
            best[name] = max(best.get(name, 0.0), rate)
            tokens[name] = n
            texts[name] = t
    four.close()
    eight.close()
    base = best["sequential"]
    reference = texts["sequential"]
    return {
        "model": "smollm2-135m (GGUF through transformers, float32)",
        "threads": args.threads,
        "prompts": len(PROMPTS),
        "new_tokens": NEW_TOKENS,
        "rounds": args.rounds,
        "tokens": tokens,
        "tokens_per_s": {k: round(v, 1) for k, v in best.items()},
        "ratio_to_sequential": {k: round(v / base, 3) for k, v in best.items()},
        "same_text_as_sequential": {
            # The forced rows go on past an end the sequential answer stopped at.
            k: sum(b.startswith(a) for a, b in zip(reference, v, strict=True))
            for k, v in texts.items()
        },
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=2))
