"""Sentence embeddings of benchmark questions, computed once per split and cached (.npz
keyed by item id)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt

from consortium.evaluation.datasets import Item
from consortium.llm.registry import cache_dir
from consortium.protocols.multiple_choice import routing_text


def question_text(item: Item) -> str:
    """What a router sees of a multiple-choice task: the question and its options."""
    return routing_text(item.question)


def embeddings_path(split: str, directory: Path | None = None) -> Path:
    return (directory or cache_dir() / "eval") / f"{split}--minilm.npz"


def question_embeddings(items: list[Item], path: Path) -> dict[str, npt.NDArray[np.float32]]:
    """Embeddings for every item, encoding only those the cache lacks."""
    cached: dict[str, npt.NDArray[np.float32]] = {}
    if path.exists():
        with np.load(path) as data:
            cached = {
                str(k): np.asarray(v) for k, v in zip(data["ids"], data["vectors"], strict=True)
            }
    missing = [it for it in items if it.id not in cached]
    if missing:
        from consortium.llm.embeddings import SentenceEncoder

        encoder = SentenceEncoder()
        vectors = encoder.encode([question_text(it) for it in missing])
        for it, v in zip(missing, vectors, strict=True):
            cached[it.id] = v
        path.parent.mkdir(parents=True, exist_ok=True)
        ids = list(cached)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, ids=np.array(ids), vectors=np.stack([cached[i] for i in ids]))
        tmp.replace(path)
    return {it.id: cached[it.id] for it in items}
