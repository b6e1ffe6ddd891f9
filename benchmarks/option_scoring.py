"""How much faster are a question's options scored together, in one decode, than one
after another? The node's llama.cpp backend scores a multiple-choice question (routing
drafts, canaries, cross-checks, `consortium bench`) by reading its stem once and then
every option as a sequence of its own in one `llama_decode` (llm/option_batch.py).

The baseline, in the same run on the same backend: each option scored by a call of its
own (`score(prompt, [option])`), so the stem is read once (the first call; the others find
it cached) and each option takes a decode of its own — the way the backend scored before.
ARC-Easy dev questions with the evaluation's prompt (protocols/multiple_choice.py), both
arms twice, alternating (together, alone, together, alone), so a drift of the machine's
speed falls on both; consecutive questions have different stems, so every arm reads
every stem once.

    .venv/bin/python benchmarks/option_scoring.py [--questions 40] [--model smollm2-135m]

Prints one JSON object: seconds per question for each arm (the faster of its two rounds),
the ratio alone / together, the largest difference between the two arms' log-likelihoods
and whether both pick the same option everywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

from consortium.evaluation.datasets import load_arc, split_path
from consortium.llm.llama_cpp_backend import LlamaCppBackend
from consortium.llm.registry import resolve_model_file
from consortium.protocols.multiple_choice import continuations, scoring_prompt


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--questions", type=int, default=40)
    parser.add_argument("--model", default="smollm2-135m", help="a bundled model")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.questions < 1 or args.threads < 1:
        parser.error("--questions and --threads must be positive")
    items = load_arc(split_path("arc_easy_dev"), limit=args.questions)
    questions = [(scoring_prompt(it.question, ""), continuations(it.question)) for it in items]
    backend = LlamaCppBackend(
        resolve_model_file(args.model, None),
        name=args.model,
        context_size=2048,
        threads=args.threads,
        parallel=8,
    )
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    try:
        backend.score(*questions[-1])  # warm: the scoring context exists before timing

        def together() -> list[list[float]]:
            return [backend.score(p, list(c)) for p, c in questions]

        def alone() -> list[list[float]]:
            return [[backend.score(p, [o])[0] for o in c] for p, c in questions]

        times: dict[str, list[float]] = {"together": [], "alone": []}
        scores: dict[str, list[list[float]]] = {}
        for _ in range(2):
            for name, arm in (("together", together), ("alone", alone)):
                start = time.perf_counter()
                scores[name] = arm()
                times[name].append(time.perf_counter() - start)
    finally:
        backend.close()
    best = {name: min(t) / len(questions) for name, t in times.items()}
    diff = max(
        abs(a - b)
        for t, s in zip(scores["together"], scores["alone"], strict=True)
        for a, b in zip(t, s, strict=True)
    )
    same_pick = all(
        t.index(max(t)) == s.index(max(s))
        for t, s in zip(scores["together"], scores["alone"], strict=True)
    )
    result: dict[str, Any] = {
        "benchmark": "option_scoring",
        "model": args.model,
        "threads": args.threads,
        "questions": len(questions),
        "options": sum(len(c) for _, c in questions),
        "load_average_at_start": load_at_start,
        "seconds": {name: [round(x, 3) for x in t] for name, t in times.items()},
        "seconds_per_question": {name: round(x, 4) for name, x in best.items()},
        "ratio_alone_over_together": round(best["alone"] / best["together"], 3),
        "max_abs_logprob_difference": round(diff, 4),
        "same_option_chosen": same_pick,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
