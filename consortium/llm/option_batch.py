"""A multiple-choice question's options scored together: the stem read once, then every
option in one decode, each as a sequence of its own over that stem.

The generation batch (llm/batching.py) keeps one KV stream per sequence, and llama.cpp
copies a sequence into another stream only whole (every cell of the stream, used or
not): putting a stem under four option sequences there moved four whole streams and
made the canary calibration six times slower than reading the options one after
another. So options are scored in a context of their own whose sequences share one KV
cache (llama.cpp's unified cache): the stem sits in sequence 0, each option's sequence
takes the stem's cells by reference (a copy of cell metadata, not of data) and the
options of a question are evaluated in one `llama_decode` (chunked only if they exceed
a batch). Sequence 0 keeps the last stem, so the next question that shares a prefix
with it (a system prompt, few-shot examples, the same question) reads only the rest.

`OptionBatch` works on the `KVModel` protocol (llm/batching.py); the llama.cpp backend
gives it the unified context and drives it on the model's thread, between two steps of
the generation batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from consortium.llm.batching import KVModel
from consortium.llm.load import LoadObserver
from consortium.llm.sampling import Logits, common_prefix, log_softmax

# Sequences for options in one decode (sequence 0 holds the stem): questions with more
# options are scored in groups of this many.
OPTION_SEQUENCES = 8
_STEM = 0


@dataclass(frozen=True)
class Option:
    """One option's tokens: `whole` = stem + the option's text (tokenized together), and
    `common`: where its own tokens start, after everything it shares with the prompt
    (at least 1: a token is predicted by the row of the token before it)."""

    whole: list[int]
    common: int


class OptionBatch:
    """Scores options over a stem in a unified-KV context of `cells` cells. One thread."""

    def __init__(
        self, model: KVModel, *, cells: int, batch_tokens: int, observer: LoadObserver
    ) -> None:
        self._model = model
        self._cells = cells
        self._batch_tokens = batch_tokens
        self._observer = observer
        self._stem: list[int] = []

    def score(self, stem: list[int], options: Sequence[Option]) -> list[float]:
        """The log-likelihood of each option's own tokens after the stem. Every option's
        `whole` starts with `stem`, has `common` > len(stem) and fits in `cells` (the
        caller checks against the context size)."""
        self._read_stem(stem)
        results: list[float] = []
        for group in self._groups(options, len(stem)):
            results.extend(self._score_group(group, len(stem)))
        return results

    def _read_stem(self, stem: list[int]) -> None:
        keep = common_prefix(self._stem, stem)
        if keep < len(self._stem) and not self._model.remove(_STEM, keep):
            self._model.remove(_STEM, 0)
            keep = 0
        del self._stem[keep:]
        self._observer.prefix(keep, len(stem))
        for i in range(keep, len(stem), self._batch_tokens):
            part = stem[i : i + self._batch_tokens]
            try:
                self._model.decode(
                    part, range(i, i + len(part)), [_STEM] * len(part), [False] * len(part)
                )
            except BaseException:
                self._model.remove(_STEM, 0)
                self._stem = []
                raise
            self._stem = stem[: i + len(part)]

    def _groups(self, options: Sequence[Option], stem_len: int) -> list[list[Option]]:
        """Options in order, as many per decode as sequences and cells allow."""
        groups: list[list[Option]] = []
        used = self._cells  # forces a new group at the first option
        for option in options:
            need = len(option.whole) - 1 - stem_len
            if not groups or len(groups[-1]) == OPTION_SEQUENCES or used + need > self._cells:
                groups.append([])
                used = stem_len
            groups[-1].append(option)
            used += need
        return groups

    def _score_group(self, group: list[Option], stem_len: int) -> list[float]:
        tokens: list[int] = []
        positions: list[int] = []
        seq_ids: list[int] = []
        wants: list[bool] = []
        for k, option in enumerate(group, start=1):
            part = option.whole[stem_len:-1]  # the row of token p predicts token p + 1
            first = option.common - 1 - stem_len
            tokens += part
            positions += range(stem_len, stem_len + len(part))
            seq_ids += [k] * len(part)
            wants += [j >= first for j in range(len(part))]
        try:
            if stem_len:
                for k in range(1, len(group) + 1):
                    self._model.copy(_STEM, k, stem_len)
            rows: list[Logits] = []
            for i in range(0, len(tokens), self._batch_tokens):
                end = i + self._batch_tokens
                out = self._model.decode(
                    tokens[i:end], positions[i:end], seq_ids[i:end], wants[i:end]
                )
                rows.append(np.array(out))  # the context reuses its logits buffer
        finally:
            for k in range(1, len(group) + 1):
                self._model.remove(k, 0)
        lps = log_softmax(np.concatenate(rows, axis=0))
        results: list[float] = []
        at = 0
        for option in group:
            targets = option.whole[option.common :]
            mine = lps[at : at + len(targets)]
            results.append(float(mine[np.arange(len(targets)), targets].sum()))
            at += len(targets)
        assert at == len(lps)
        return results
