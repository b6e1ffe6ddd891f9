"""`consortium bench redaction` (detection half): span-level precision, recall and F2 per
entity type, the leak rate after masking every detected span, and latency, on Presidio's
synthetic set (`presidio_synth_dataset_v2.json`: rows `{full_text, spans: [{entity_type,
entity_value, start_position, end_position}]}`).

Types are compared after mapping both sides to one vocabulary (`DATASET_TYPES`,
`DETECTOR_TYPES`): the set's STREET_ADDRESS, GPE and ZIP_CODE, and our LOCATION and
STREET_ADDRESS, are all LOCATION; the set's DOMAIN_NAME is our URL. Overlap rule: a
labelled span is found when a detected span of the same mapped type shares at least one
character with it; a detected span is correct when it shares at least one character with
a labelled span of the same mapped type. Detected types the set never labels (UUID,
CRYPTO, ...) are counted apart (`_unlabelled_detections`), not as false positives.
Leak rate: the share of labelled values still present verbatim in the text after every
detected span (of any type) is replaced by a placeholder; `not_fully_covered` is the
stricter share of labelled spans with at least one character outside every detected span.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from consortium.evaluation.datasets import data_dir
from consortium.redaction.detector import Detector, Span

DATASET_FILE = "presidio_synth_dataset_v2.json"

# The set's labels -> the compared vocabulary. TITLE (Mr., Dr.) has no recognizer.
DATASET_TYPES: dict[str, str] = {
    "STREET_ADDRESS": "LOCATION",
    "GPE": "LOCATION",
    "ZIP_CODE": "LOCATION",
    "DOMAIN_NAME": "URL",
}
# Ours -> the compared vocabulary.
DETECTOR_TYPES: dict[str, str] = {"STREET_ADDRESS": "LOCATION"}

TARGETS: dict[str, float] = {
    "EMAIL_ADDRESS": 0.95,
    "PHONE_NUMBER": 0.95,
    "CREDIT_CARD": 0.95,
    "IBAN_CODE": 0.95,
    "US_SSN": 0.95,
    "IP_ADDRESS": 0.95,
    "PERSON": 0.85,
    "LOCATION": 0.8,
}


@dataclass(frozen=True, slots=True)
class Labelled:
    start: int
    end: int
    entity_type: str  # mapped
    value: str


@dataclass(frozen=True, slots=True)
class Row:
    text: str
    spans: tuple[Labelled, ...]


def load_rows(path: Path | None = None, limit: int | None = None) -> list[Row]:
    """The synthetic set's rows, labels mapped to the compared vocabulary."""
    raw = json.loads((path or data_dir() / DATASET_FILE).read_text(encoding="utf-8"))
    rows = [
        Row(
            r["full_text"],
            tuple(
                Labelled(
                    s["start_position"],
                    s["end_position"],
                    DATASET_TYPES.get(s["entity_type"], s["entity_type"]),
                    s["entity_value"],
                )
                for s in r["spans"]
            ),
        )
        for r in raw
    ]
    return rows[:limit] if limit else rows


def _f(beta: float, p: float, r: float) -> float:
    b2 = beta * beta
    return (1 + b2) * p * r / (b2 * p + r) if p + r else 0.0


def _mask(text: str, spans: Sequence[Span]) -> str:
    out, pos = [], 0
    for s in sorted(spans, key=lambda s: s.start):
        if s.end <= pos:
            continue
        out.append(text[pos : max(pos, s.start)])
        out.append(f"<{s.entity_type}>")
        pos = s.end
    out.append(text[pos:])
    return "".join(out)


def score_rows(rows: Sequence[Row], detections: Sequence[Sequence[Span]]) -> dict[str, Any]:
    """Per-type precision, recall, F2; overall (labelled types only); leak rates."""
    found: Counter[str] = Counter()
    labelled: Counter[str] = Counter()
    correct: Counter[str] = Counter()
    detected: Counter[str] = Counter()
    unlabelled: Counter[str] = Counter()
    leaked = not_covered = 0
    leaked_types: Counter[str] = Counter()
    labelled_types = {s.entity_type for r in rows for s in r.spans}
    for row, spans in zip(rows, detections, strict=True):
        mapped = [(s.start, s.end, DETECTOR_TYPES.get(s.entity_type, s.entity_type)) for s in spans]
        for g in row.spans:
            labelled[g.entity_type] += 1
            if any(t == g.entity_type and a < g.end and g.start < b for a, b, t in mapped):
                found[g.entity_type] += 1
            covered: set[int] = set()
            for a, b, _ in mapped:
                covered.update(range(max(a, g.start), min(b, g.end)))
            if len(covered) < g.end - g.start:
                not_covered += 1
        masked = _mask(row.text, spans)
        for g in row.spans:
            if g.value and g.value in masked:
                leaked += 1
                leaked_types[g.entity_type] += 1
        for a, b, t in mapped:
            if t not in labelled_types:
                unlabelled[t] += 1
                continue
            detected[t] += 1
            if any(g.entity_type == t and a < g.end and g.start < b for g in row.spans):
                correct[t] += 1
    result: dict[str, Any] = {}
    for t in sorted(labelled_types | set(detected)):
        p = correct[t] / detected[t] if detected[t] else 0.0
        r = found[t] / labelled[t] if labelled[t] else 0.0
        result[t] = {
            "labelled": labelled[t],
            "detected": detected[t],
            "precision": p,
            "recall": r,
            "f2": _f(2.0, p, r),
            "target_recall": TARGETS.get(t),
            "met": None if t not in TARGETS else r >= TARGETS[t],
        }
    tp, n_lab, n_det = sum(correct.values()), sum(labelled.values()), sum(detected.values())
    p_all = tp / n_det if n_det else 0.0
    r_all = sum(found.values()) / n_lab if n_lab else 0.0
    result["ALL"] = {
        "labelled": n_lab,
        "detected": n_det,
        "precision": p_all,
        "recall": r_all,
        "f2": _f(2.0, p_all, r_all),
    }
    result["_leaks"] = {
        "leak_rate_verbatim": leaked / n_lab if n_lab else 0.0,
        "not_fully_covered": not_covered / n_lab if n_lab else 0.0,
        "leaked_by_type": dict(leaked_types.most_common()),
    }
    result["_unlabelled_detections"] = dict(unlabelled.most_common())
    return result


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def messages_of_words(rows: Sequence[Row], words: int = 200, count: int = 100) -> list[str]:
    """`count` messages of about `words` words, consecutive texts of the set joined."""
    out: list[str] = []
    buf: list[str] = []
    n = 0
    i = 0
    while len(out) < count and rows:
        text = rows[i % len(rows)].text
        buf.append(text)
        n += len(text.split())
        i += 1
        if n >= words:
            out.append("\n".join(buf))
            buf, n = [], 0
        if i > 50 * len(rows):
            break
    return out


def latency(detect: Callable[[str], object], texts: Sequence[str]) -> dict[str, float]:
    """p50/p99 milliseconds per text, and per 200 words (each text's time scaled by
    200 / its word count)."""
    detect(texts[0])  # warm-up
    per_text, per_200 = [], []
    for t in texts:
        started = time.perf_counter()
        detect(t)
        ms = (time.perf_counter() - started) * 1000
        per_text.append(ms)
        per_200.append(ms * 200 / max(1, len(t.split())))
    return {
        "p50_ms": statistics.median(per_text),
        "p99_ms": _percentile(per_text, 0.99),
        "mean_words": statistics.fmean(len(t.split()) for t in texts),
        "p50_ms_per_200_words_scaled": statistics.median(per_200),
    }


@dataclass(frozen=True)
class Detected:
    """A detector's spans on each row, and the time each row took (ms)."""

    spans: list[list[Span]]
    ms: list[float]


def detect_rows(
    detector: Detector, rows: Sequence[Row], progress: Callable[[int], None] | None = None
) -> Detected:
    """`detector` run over every row's text, timed."""
    spans: list[list[Span]] = []
    ms: list[float] = []
    for i, row in enumerate(rows):
        started = time.perf_counter()
        spans.append(detector.detect(row.text))
        ms.append((time.perf_counter() - started) * 1000)
        if progress is not None:
            progress(i + 1)
    return Detected(spans, ms)


def evaluate_detection(
    ner_detector: Detector,
    pattern_detector: Detector | None,
    rows: Sequence[Row],
    *,
    latency_messages: int = 100,
    baseline: Callable[[str], list[Span]] | None = None,
    progress: Callable[[int], None] | None = None,
    detected: Detected | None = None,
) -> dict[str, Any]:
    """Quality with `ner_detector` over `rows` (and of `baseline`, Presidio's default
    configuration, when given); latency of both detectors on ~200-word
    messages and on the set's own (short) texts. `detected`: `ner_detector`'s spans on
    `rows` when the caller already has them (`detect_rows`)."""
    if detected is None:
        detected = detect_rows(ner_detector, rows, progress)
    detections, by_row_ms = detected.spans, detected.ms
    result = score_rows(rows, detections)
    if baseline is not None:
        scored = score_rows(rows, [baseline(r.text) for r in rows])
        result["_baseline_presidio_default"] = {
            "ALL": scored["ALL"],
            **{
                t: {"recall": scored[t]["recall"], "precision": scored[t]["precision"]}
                for t in TARGETS
                if t in scored
            },
            "leak_rate_verbatim": scored["_leaks"]["leak_rate_verbatim"],
        }
    long_messages = messages_of_words(rows, 200, latency_messages)
    timing: dict[str, Any] = {
        "with_ner_200_words": latency(ner_detector.detect, long_messages),
        "with_ner_set_texts": {
            "p50_ms": statistics.median(by_row_ms),
            "p99_ms": _percentile(by_row_ms, 0.99),
        },
    }
    if pattern_detector is not None:
        timing["pattern_only_200_words"] = latency(pattern_detector.detect, long_messages)
        timing["pattern_only_set_texts"] = latency(
            pattern_detector.detect, [r.text for r in rows[: max(latency_messages, 200)]]
        )
    result["_latency"] = timing
    result["_targets"] = {
        "recall": {t: result.get(t, {}).get("met") for t in TARGETS},
        "p50_200_words_pattern_only_le_30ms": (
            timing["pattern_only_200_words"]["p50_ms"] <= 30.0
            if "pattern_only_200_words" in timing
            else None
        ),
        "p50_200_words_with_ner_le_100ms": timing["with_ner_200_words"]["p50_ms"] <= 100.0,
    }
    result["_setup"] = {
        "texts": len(rows),
        "labelled_spans": sum(len(r.spans) for r in rows),
        "overlap_rule": "any shared character, same mapped type",
        "type_mapping": {
            **{f"set:{k}": v for k, v in DATASET_TYPES.items()},
            **{f"ours:{k}": v for k, v in DETECTOR_TYPES.items()},
        },
        "spacy_model": ner_detector.settings.spacy_model,
        "load_s_with_ner": round(ner_detector.load_seconds, 3),
        "load_s_pattern_only": (
            round(pattern_detector.load_seconds, 3) if pattern_detector else None
        ),
    }
    return result


def per_type_misses(rows: Sequence[Row], detections: Sequence[Sequence[Span]]) -> dict[str, int]:
    """Counts of missed labelled spans by type (for tuning; values never printed)."""
    missed: dict[str, int] = defaultdict(int)
    for row, spans in zip(rows, detections, strict=True):
        for g in row.spans:
            if not any(
                DETECTOR_TYPES.get(s.entity_type, s.entity_type) == g.entity_type
                and s.start < g.end
                and g.start < s.end
                for s in spans
            ):
                missed[g.entity_type] += 1
    return dict(missed)
