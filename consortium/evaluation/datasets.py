"""Benchmark data: ARC multiple-choice rows as `Item`s.

ARC rows are `{id, question: {stem, choices: [{text, label}]}, answerKey}`; labels are
letters or digits and a few rows have 3 or 5 choices. The data lives outside the
repository (../shared/data by default, or CONSORTIUM_DATA_DIR).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from consortium.errors import ConfigError
from consortium.protocols.multiple_choice import Question

SPLITS = {
    "arc_easy_dev": "arc_easy_dev.jsonl",
    "arc_easy_test": "arc_easy_test.jsonl",
    "arc_challenge_dev": "arc_challenge_dev.jsonl",
}


@dataclass(frozen=True)
class Item:
    id: str
    question: Question
    answer: int  # index of the correct choice
    source: str = ""  # e.g. the exam the question comes from (ARC ids: MCAS_2000_4_6)


def data_dir() -> Path:
    env = os.environ.get("CONSORTIUM_DATA_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "shared" / "data"


def split_path(split: str, directory: Path | None = None) -> Path:
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; known: {', '.join(SPLITS)}", key="--split")
    path = (directory or data_dir()) / SPLITS[split]
    if not path.is_file():
        raise ConfigError(
            "benchmark data not found (set CONSORTIUM_DATA_DIR to the folder holding it)",
            path=str(path),
        )
    return path


def load_arc(path: Path, limit: int | None = None) -> list[Item]:
    items: list[Item] = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            if limit is not None and len(items) >= limit:
                break
            try:
                items.append(_item(json.loads(line)))
            except (ValueError, KeyError, TypeError) as e:
                raise ConfigError(f"line {number}: not an ARC row ({e})", path=str(path)) from None
    return items


def _item(row: dict[str, object]) -> Item:
    q = row["question"]
    if not isinstance(q, dict):
        raise TypeError("question is not an object")
    choices = q["choices"]
    if not isinstance(choices, list):
        raise TypeError("choices is not a list")
    labels = tuple(str(c["label"]).strip() for c in choices)
    texts = tuple(str(c["text"]) for c in choices)
    key = str(row["answerKey"]).strip()
    if key not in labels:
        raise ValueError(f"answer key {key!r} is not one of the labels {labels}")
    item_id = str(row["id"])
    return Item(
        id=item_id,
        question=Question(stem=str(q["stem"]), choices=texts, labels=labels),
        answer=labels.index(key),
        source=item_id.split("_", 1)[0],
    )
