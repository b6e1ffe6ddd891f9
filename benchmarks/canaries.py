"""Do calibrated canaries tell an honest peer from a substituted one?

A peer declares gemma3-270m. The origin's canaries are ARC-Easy items; the calibrated
pool keeps those gemma3-270m answers right greedily (argmax of token-normalised option
log-likelihoods, as node/canaries.py judges a scoring reply). Peers behave:

- honest: answers with gemma3-270m;
- substituted: answers with smollm2-135m while claiming gemma3-270m;
- random: picks an option uniformly (the expected pass rate, exact);
- first_option: always picks the first option;
- always_wrong: always picks a wrong option.

Prints one JSON object: pool sizes and pass rates per behaviour on the uncalibrated pool
(every item) and the calibrated pools (margin 0 and `--margin`), the same for the reverse
direction (a smollm2-135m declaration, gemma3-270m substituted), and for the substituted
peer the expected canaries (and calls, at the scheduler's default rate) until it has
failed k of them, and the canaries after which it has failed at least one with 99 %.
`--normalisation` is how option scores become a choice (node/canaries.py judges with
token-normalised scores).

Per-item outputs come from the evaluation caches (~/.cache/consortium/eval); only items
cached for both models are used, unless `--compute` lets the harness compute the missing
ones (slow: llama.cpp on every missing item).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, get_args

from consortium.evaluation.canaries import (
    ChoiceJudge,
    cached_choices,
    calibrate,
    canaries_from_arc,
    pass_rate,
)
from consortium.evaluation.datasets import Item, load_arc, split_path
from consortium.evaluation.harness import model_outputs, no_progress
from consortium.evaluation.outputs import ItemOutput, load_outputs, outputs_path
from consortium.protocols.multiple_choice import Normalisation
from consortium.trust.canaries import MultipleChoiceCanary
from consortium.trust.canary_schedule import CanarySettings

MODELS = ("gemma3-270m", "smollm2-135m")


def outputs(
    split: str, items: list[Item], compute: bool, cache: Path | None
) -> tuple[list[Item], dict[str, Any]]:
    if compute:
        with no_progress() as start:
            got = {m: model_outputs(split, m, items, start, cache) for m in MODELS}
    else:
        got = {m: load_outputs(outputs_path(split, m, cache)) for m in MODELS}
    both = [it for it in items if all(it.id in got[m] for m in MODELS)]
    return both, got


def behaviours(declared: ChoiceJudge, substitute: ChoiceJudge) -> dict[str, ChoiceJudge]:
    return {
        "honest": declared,
        "substituted": substitute,
        "first_option": lambda c: 0,
        "always_wrong": lambda c: (c.answer + 1) % len(c.choices),
    }


def wilson(share: float, n: int, z: float = 1.96) -> list[float]:
    """The Wilson score interval (95 %) of a pass rate over n canaries."""
    if n == 0:
        return [0.0, 1.0]
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)]


def rates(
    pool: Sequence[MultipleChoiceCanary], judges: Mapping[str, ChoiceJudge]
) -> dict[str, Any]:
    out: dict[str, Any] = {"size": len(pool)}
    for name, judge in judges.items():
        out[name] = round(pass_rate(pool, judge), 4)
    out["substituted_ci95"] = wilson(out["substituted"], len(pool))
    out["random"] = round(sum(1 / len(c.choices) for c in pool) / len(pool), 4) if pool else 0.0
    return out


def detection(pass_p: float, rate: float) -> dict[str, Any]:
    """Failures are independent draws with probability 1 - pass_p: the canaries until
    the k-th failure follow a negative binomial, mean k / (1 - pass_p)."""
    fail = 1.0 - pass_p
    if fail <= 0:
        return {"never_fails": True}
    expected = {str(k): round(k / fail, 2) for k in (1, 3, 5)}
    return {
        "expected_canaries_until_k_failures": expected,
        "expected_calls_until_k_failures_at_rate": {
            k: round(v / rate, 1) for k, v in expected.items()
        },
        "canaries_for_99pct_one_failure": math.ceil(math.log(0.01) / math.log(pass_p))
        if pass_p > 0
        else 1,
    }


def direction(
    declared: str,
    substitute: str,
    pool: list[MultipleChoiceCanary],
    got: Mapping[str, Mapping[str, ItemOutput]],
    margin: float,
    norm: Normalisation,
) -> dict[str, Any]:
    judges = behaviours(cached_choices(got[declared], norm), cached_choices(got[substitute], norm))
    calibrated, report = calibrate(pool, declared, choose=cached_choices(got[declared], norm))
    kept = [c for c in calibrated if declared in c.models]
    strict, _ = calibrate(
        pool, declared, choose=cached_choices(got[declared], norm, min_margin=margin)
    )
    kept_margin = [c for c in strict if declared in c.models]
    assert all(isinstance(c, MultipleChoiceCanary) for c in kept + kept_margin)
    calibrated_rates = rates(kept, judges)  # type: ignore[arg-type]
    margin_rates = rates(kept_margin, judges)  # type: ignore[arg-type]
    rate = CanarySettings().rate
    return {
        "declared": declared,
        "substitute": substitute,
        "uncalibrated": rates(pool, judges),
        "calibrated": calibrated_rates,
        f"calibrated_margin_{margin}": margin_rates,
        "wrong_in_calibration": len(report.wrong),
        "substituted_detection_calibrated": detection(calibrated_rates["substituted"], rate),
        "substituted_detection_uncalibrated": detection(rates(pool, judges)["substituted"], rate),
        "honest_false_failures_uncalibrated": detection(rates(pool, judges)["honest"], rate),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--split", default="arc_easy_dev")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--margin", type=float, default=0.1)
    parser.add_argument("--normalisation", choices=get_args(Normalisation), default="tokens")
    parser.add_argument("--cache", type=Path, default=None, help="the outputs' cache folder")
    parser.add_argument("--compute", action="store_true", help="compute missing outputs")
    args = parser.parse_args()
    items = load_arc(split_path(args.split), limit=args.limit)
    both, got = outputs(args.split, items, args.compute, args.cache)
    if not both:
        raise SystemExit(f"no cached outputs of both models on {args.split} (try --compute)")
    pool = canaries_from_arc(both)
    result = {
        "split": args.split,
        "items_in_split": len(items),
        "items_cached_for_both_models": len(both),
        "normalisation": args.normalisation,
        "gemma_declared": direction(
            "gemma3-270m", "smollm2-135m", pool, got, args.margin, args.normalisation
        ),
        "smollm_declared": direction(
            "smollm2-135m", "gemma3-270m", pool, got, args.margin, args.normalisation
        ),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
