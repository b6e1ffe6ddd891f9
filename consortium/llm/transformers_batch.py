"""Static batching for the transformers backend: requests that wait together are
generated together, one padding-aware forward pass per step for all of them.

Each request runs the shared decode loop (decode_loop.generate: sampling with its own
temperature, top-p and seed, stop strings, log-probabilities, cancellation, usage) on its
own worker thread, with a decoder whose `prefill` and `advance` hand the request's tokens
to one batch thread and wait for the request's row of logits. The batch thread takes the
requests waiting when it is free (up to `parallel`), prefills them in one left-padded
forward pass (attention mask, position ids counted from each row's first real token),
then advances every live row by one token per forward pass. A row leaves the batch when
its loop ends (end token, stop string, max_tokens, cancellation, an error): its rows of
the KV cache are dropped, so the others do not pay for it. Requests that arrive while a
batch runs wait for the next batch (static batching: a batch's requests start together).

The batch thread waits up to GATHER_S after each arrival for another before starting a
batch, so a burst of requests handed to the worker's threads at once is generated as one
batch rather than split; a lone request starts GATHER_S later.

Greedy output can differ from the one-at-a-time path where two tokens' logits are nearly
equal: a batched, padded matrix product adds the same numbers in another order (float32
rounding); tests/llm/test_transformers_batching.py bounds how often.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from consortium.errors import ModelError
from consortium.llm.sampling import Logits

# How long the batch thread waits after an arrival for another before it starts a batch.
GATHER_S = 0.02


@dataclass(eq=False)
class Row:
    """One request's place in a batch: its prompt, the token it asks to advance by, the
    logits it waits for, and whether it has left."""

    tokens: list[int]
    next_token: int | None = None
    logits: Logits | None = None
    error: BaseException | None = None
    left: bool = False
    ready: threading.Event = field(default_factory=threading.Event)


class BatchRunner:
    """The batch thread of one model: `join` a request, `wait` for its logits, `advance`
    it by a token, `leave` when its loop ends. `forward_lock` is held around each forward
    pass (the backend's other calls on the model take it too)."""

    def __init__(
        self, model: Any, torch: Any, parallel: int, pad_id: int, forward_lock: threading.Lock
    ) -> None:
        self._model = model
        self._torch = torch
        self._parallel = parallel
        self._pad = pad_id
        self._forward_lock = forward_lock
        self._cond = threading.Condition()
        self._pending: list[Row] = []
        self._closed = False
        # Counters for tests and the README: batches run, forward steps and rows advanced.
        self.batches = 0
        self.steps = 0
        self.step_rows = 0
        self._thread = threading.Thread(target=self._run, name="transformers-batch", daemon=True)
        self._thread.start()

    # -- the request's side (its worker thread) --------------------------------------------

    def join(self, tokens: list[int]) -> Row:
        row = Row(list(tokens))
        with self._cond:
            if self._closed:
                raise ModelError("the model is closed")
            self._pending.append(row)
            self._cond.notify_all()
        return row

    def wait(self, row: Row) -> Logits:
        row.ready.wait()
        row.ready.clear()
        if row.error is not None:
            raise row.error
        assert row.logits is not None
        return row.logits

    def advance(self, row: Row, token: int) -> None:
        with self._cond:
            row.next_token = token
            self._cond.notify_all()

    def leave(self, row: Row) -> None:
        with self._cond:
            row.left = True
            if row in self._pending:
                self._pending.remove(row)
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()

    # -- the batch thread ----------------------------------------------------------------

    def _take(self) -> list[Row] | None:
        """The next batch: the requests waiting, once no other arrives within GATHER_S
        (or `parallel` wait); None once closed."""
        with self._cond:
            while not self._pending and not self._closed:
                self._cond.wait()
            seen = -1
            while not self._closed and seen != len(self._pending) < self._parallel:
                seen = len(self._pending)
                deadline = time.monotonic() + GATHER_S
                while len(self._pending) == seen and (left := deadline - time.monotonic()) > 0:
                    self._cond.wait(left)
            if self._closed:
                for row in self._pending:
                    row.error = ModelError("the model is closed")
                    row.ready.set()
                self._pending.clear()
                return None
            batch = self._pending[: self._parallel]
            del self._pending[: self._parallel]
            return batch

    def _run(self) -> None:
        while (rows := self._take()) is not None:
            if not rows:
                continue
            self.batches += 1
            try:
                self._generate(rows)
            except Exception as e:  # a failed forward pass fails the batch's requests
                error = ModelError(f"the batched generation failed: {type(e).__name__}: {e}")
                for row in rows:
                    row.error = error
                    row.ready.set()

    def _forward(self, ids: Any, mask: Any, positions: Any, cache: Any) -> Logits:
        torch = self._torch
        with self._forward_lock, torch.no_grad():
            out = self._model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            )
        self.steps += 1
        self.step_rows += int(ids.shape[0])
        logits: Logits = out.logits[:, -1].float().numpy().astype(np.float32)
        return logits

    def _deliver(self, rows: list[Row], logits: Logits) -> None:
        for row, values in zip(rows, logits, strict=True):
            row.logits = values.copy()
            row.ready.set()

    def _generate(self, rows: list[Row]) -> None:
        from transformers import DynamicCache

        torch = self._torch
        width = max(len(r.tokens) for r in rows)
        ids = torch.tensor([[self._pad] * (width - len(r.tokens)) + r.tokens for r in rows])
        mask = torch.tensor([[0] * (width - len(r.tokens)) + [1] * len(r.tokens) for r in rows])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self._model.config)
        self._deliver(rows, self._forward(ids, mask, positions, cache))
        nexts = [len(r.tokens) for r in rows]
        live = list(rows)
        while True:
            with self._cond:
                while not all(r.left or r.next_token is not None for r in live):
                    self._cond.wait()
                keep = [i for i, r in enumerate(live) if not r.left]
                tokens = [live[i].next_token for i in keep]
                for i in keep:
                    live[i].next_token = None
            if not keep:
                return
            if len(keep) < len(live):
                index = torch.tensor(keep)
                cache.batch_select_indices(index)
                mask = mask[index]
                live = [live[i] for i in keep]
                nexts = [nexts[i] for i in keep]
            mask = torch.cat([mask, torch.ones((len(live), 1), dtype=mask.dtype)], dim=1)
            step = torch.tensor([[t] for t in tokens])
            positions = torch.tensor([[n] for n in nexts])
            nexts = [n + 1 for n in nexts]
            self._deliver(live, self._forward(step, mask, positions, cache))
