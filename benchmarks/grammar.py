"""What does JSON-constrained generation (`response_format`, a llama.cpp grammar) cost?
The same prompt and model, generated four ways, alternating so drift hits all alike:

  plain greedy, json_object greedy, plain sampled (temperature 0.7, top_p 0.9, fixed seed),
  json_object sampled (the same).

Prints one JSON object: decode tokens/s per mode, the ratios json / plain for greedy and
sampled decoding, and whether every constrained answer parsed as a JSON object.

    .venv/bin/python benchmarks/grammar.py [--model smollm2-135m] [--rounds 3] [--max-tokens 96]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
from typing import Any

from consortium.llm.base import ChatMessage, Completion, GenerationParams, ResponseFormat
from consortium.llm.llama_cpp_backend import LlamaCppBackend
from consortium.llm.registry import resolve_model_file

PROMPT = (
    "Describe a city you like as a JSON object with the keys name, country, population "
    "and three famous sights."
)
MODES: dict[str, dict[str, Any]] = {
    "plain_greedy": {"temperature": 0.0},
    "json_greedy": {"temperature": 0.0, "response_format": ResponseFormat("json_object")},
    "plain_sampled": {"temperature": 0.7, "top_p": 0.9, "seed": 7},
    "json_sampled": {
        "temperature": 0.7,
        "top_p": 0.9,
        "seed": 7,
        "response_format": ResponseFormat("json_object"),
    },
}


def run(backend: LlamaCppBackend, max_tokens: int, settings: dict[str, Any]) -> Completion:
    gen = backend.stream_chat(
        [ChatMessage("user", PROMPT)],
        GenerationParams(max_tokens=max_tokens, **settings),
        threading.Event(),
    )
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            completion: Completion = stop.value
            return completion


def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=96)
    args = parser.parse_args(argv)
    backend = LlamaCppBackend(
        resolve_model_file(args.model, None), name=args.model, context_size=2048, threads=2
    )
    rates: dict[str, list[float]] = {mode: [] for mode in MODES}
    tokens: dict[str, int] = dict.fromkeys(MODES, 0)
    parsed = True
    try:
        run(backend, 8, {})  # warm-up
        for _ in range(args.rounds):
            for mode, settings in MODES.items():
                completion = run(backend, args.max_tokens, settings)
                rates[mode].append(completion.decode_tokens_per_s)
                tokens[mode] += completion.usage.output_tokens
                if mode.startswith("json") and completion.finish_reason == "stop":
                    try:
                        parsed &= isinstance(json.loads(completion.text), dict)
                    except ValueError:
                        parsed = False
    finally:
        backend.close()
    median = {mode: round(statistics.median(r), 1) for mode, r in rates.items()}
    return {
        "benchmark": "grammar",
        "model": args.model,
        "rounds": args.rounds,
        "max_tokens": args.max_tokens,
        "decode_tokens_per_s_p50": median,
        "output_tokens": tokens,
        "ratio_json_over_plain_greedy": round(median["json_greedy"] / median["plain_greedy"], 3),
        "ratio_json_over_plain_sampled": round(median["json_sampled"] / median["plain_sampled"], 3),
        "every_finished_json_answer_parsed": parsed,
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=2))
