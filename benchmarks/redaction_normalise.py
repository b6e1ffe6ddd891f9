"""What does reading a normalised copy (redaction/normalise.py) cost the detector, and
what does it change on ordinary text? One process, one detector of each kind, the same
texts detected as written (the detector before normalisation, `detect_as_written`) and
normalised (`detect`), alternating text by text so drift hits both alike:

  quality on Presidio's synthetic set (`../shared/data/presidio_synth_dataset_v2.json`):
  precision, recall, F2 and the verbatim leak rate, overall and for the pattern types,
  on the set as it is and on a typographic copy of it (every fourth space a no-break
  space, " - " an em dash between spaces: one character for one, so the labels hold);
  latency p50 / p99 with NER and pattern-only, on ~200-word messages and the set's own
  texts, and of `normalise` alone; the ratios normalised / as written.

    PYTHONPATH=. .venv/bin/python benchmarks/redaction_normalise.py [--limit N] [--messages 100]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from consortium.evaluation.redaction_eval import (
    TARGETS,
    Row,
    load_rows,
    messages_of_words,
    score_rows,
)
from consortium.redaction.detector import Detector, Span
from consortium.redaction.normalise import normalise
from consortium.redaction.settings import DetectionSettings


def typographic(text: str) -> str:
    """`text` as a word processor might write it: every fourth space a no-break space,
    " - " an em dash (one character for one)."""
    out: list[str] = []
    spaces = 0
    for i, c in enumerate(text):
        if c == "-" and text[i - 1 : i] == " " and text[i + 1 : i + 2] == " ":
            out.append("\u2014")
        elif c == " ":
            spaces += 1
            out.append("\u00a0" if spaces % 4 == 0 else " ")
        else:
            out.append(c)
    return "".join(out)


def _quality(rows: Sequence[Row], spans: Sequence[Sequence[Span]]) -> dict[str, Any]:
    scored = score_rows(rows, spans)
    out: dict[str, Any] = {
        "ALL": {k: round(scored["ALL"][k], 4) for k in ("detected", "precision", "recall", "f2")},
        "leak_rate_verbatim": round(scored["_leaks"]["leak_rate_verbatim"], 4),
    }
    for t in TARGETS:
        if t in scored:
            out[t] = {k: round(scored[t][k], 4) for k in ("precision", "recall")}
    return out


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _timed(detect: Callable[[str], object], text: str) -> float:
    started = time.perf_counter()
    detect(text)
    return (time.perf_counter() - started) * 1000


def latency(detector: Detector, texts: Sequence[str]) -> dict[str, float]:
    """p50 / p99 ms of both ways, alternating which goes first, and their ratio."""
    detector.detect(texts[0])
    detector.detect_as_written(texts[0])
    written: list[float] = []
    normalised: list[float] = []
    for i, t in enumerate(texts):
        if i % 2:
            written.append(_timed(detector.detect_as_written, t))
            normalised.append(_timed(detector.detect, t))
        else:
            normalised.append(_timed(detector.detect, t))
            written.append(_timed(detector.detect_as_written, t))
    p50_w, p50_n = statistics.median(written), statistics.median(normalised)
    return {
        "as_written_p50_ms": round(p50_w, 2),
        "normalised_p50_ms": round(p50_n, 2),
        "as_written_p99_ms": round(_p(written, 0.99), 2),
        "normalised_p99_ms": round(_p(normalised, 0.99), 2),
        "ratio_p50": round(p50_n / p50_w, 3),
    }


def normalise_alone(texts: Sequence[str]) -> dict[str, float]:
    ms = [_timed(normalise, t) for t in texts]
    return {"p50_ms": round(statistics.median(ms), 3), "p99_ms": round(_p(ms, 0.99), 3)}


def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="the first N texts of the set")
    parser.add_argument("--messages", type=int, default=100, help="~200-word messages timed")
    args = parser.parse_args(argv)
    rows = load_rows(limit=args.limit)
    ner = Detector(DetectionSettings())
    patterns = Detector(DetectionSettings(ner=False))
    typo = [Row(typographic(r.text), r.spans) for r in rows]
    quality: dict[str, Any] = {}
    for name, these in (("set", rows), ("typographic", typo)):
        written = [ner.detect_as_written(r.text) for r in these]
        normalised = [ner.detect(r.text) for r in these]
        quality[name] = {
            "as_written": _quality(these, written),
            "normalised": _quality(these, normalised),
        }
    messages = messages_of_words(rows, 200, args.messages)
    set_texts = [r.text for r in rows[: max(args.messages, 200)]]
    return {
        "quality_with_ner": quality,
        "latency": {
            "with_ner_200_words": latency(ner, messages),
            "with_ner_set_texts": latency(ner, set_texts),
            "pattern_only_200_words": latency(patterns, messages),
            "pattern_only_set_texts": latency(patterns, set_texts),
            "normalise_alone_200_words": normalise_alone(messages),
        },
        "_setup": {
            "texts": len(rows),
            "messages": len(messages),
            "mean_words": round(statistics.fmean(len(m.split()) for m in messages), 1),
        },
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=1))
