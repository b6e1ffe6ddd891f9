"""Continuous batching: every generation a model serves advances in one decode step.

A `Batch` holds a fixed number of slots, one KV-cache sequence each. A request joins at
any step boundary in a free slot and leaves when it ends (end of text, a stop, its token
budget, cancellation), so a short answer never waits for a long one and a new request
never waits for a running one to finish. Each `step` builds one llama.cpp batch: one
token for every sequence that is generating, then as many prompt tokens of sequences
still reading their prompt as the batch has room for (prompts are read in chunks, so a
long prompt delays the others' next token by one chunk, not by the whole prompt). The
logits of each generating sequence go to its own `decode_loop.Sequence`, which samples
with the request's own parameters (temperature, top_p, seed, grammar, stops, logprobs):
exactly the state the one-at-a-time loop runs.

Prefix reuse: a slot keeps the tokens of its last sequence in the KV cache after it
ends. A new prompt goes to the free slot whose cache shares the longest prefix with it,
and if another slot (free or busy) shares a longer one, that prefix is copied across
sequences (a copy of the KV cache's data, not a recomputation). A system prompt,
few-shot examples or a question's stem is computed once.

The batch is driven by one thread (the model's worker, llm/worker.py); it is not
thread-safe. The model side is the `KVModel` protocol, implemented on llama.cpp's
context in llm/llama_cpp_backend.py.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from consortium.errors import ModelError
from consortium.llm import decode_loop
from consortium.llm.base import ChatMessage, Chunk, Completion, GenerationParams
from consortium.llm.load import LoadObserver, NullLoadObserver
from consortium.llm.sampling import Logits, common_prefix

log = logging.getLogger(__name__)

# A prefix shorter than this is not worth copying from another sequence: a copy moves
# the other sequence's whole KV stream (SmolLM2, 2048 cells: 47 MB, a few ms), about the
# time a few dozen prompt tokens take to read again.
MIN_COPIED_PREFIX = 64


class SequenceSink(Protocol):
    """Where a sequence's output goes: called on the batch's thread."""

    def chunk(self, chunk: Chunk) -> None: ...

    def done(self, completion: Completion) -> None: ...

    def error(self, error: BaseException) -> None: ...


class KVModel(Protocol):
    """What the batch needs of a model context with several KV-cache sequences."""

    def decode(
        self, tokens: Seq[int], positions: Seq[int], seq_ids: Seq[int], logits: Seq[bool]
    ) -> Logits:
        """Evaluates one batch; returns the logits of the rows flagged in `logits`, in
        batch order (shape: flagged rows x vocabulary). Valid until the next decode.
        Raises ModelError if the model cannot evaluate it."""
        ...

    def remove(self, seq_id: int, start: int) -> bool:
        """Drops the cache of `seq_id` from position `start` on; False if the cache cannot
        drop part of a sequence (then it must be dropped whole: start 0)."""
        ...

    def copy(self, src: int, dst: int, length: int) -> None:
        """Makes positions [0, length) of `src` part of `dst` too (dst holds nothing)."""
        ...

    def complete_from_start(self, seq_id: int) -> bool:
        """Whether the cache holds `seq_id` from position 0 (a sliding-window cache
        forgets early positions: those cannot be reused)."""
        ...


@runtime_checkable
class BatchingBackend(Protocol):
    """A backend whose generations run in a `Batch` its worker drives (`step`)."""

    batch: Batch

    def start(
        self,
        messages: Seq[ChatMessage] | None,
        prompt: str | None,
        params: GenerationParams,
        cancel: threading.Event,
        sink: SequenceSink,
    ) -> None:
        """Starts a generation (chat `messages` or a raw `prompt`) in a free slot; raises
        before taking one if it cannot run (prompt too long, bad schema)."""
        ...


@dataclass(eq=False)
class _Active:
    seq: decode_loop.Sequence
    sink: SequenceSink
    # Prompt tokens not yet evaluated; empty once the sequence generates.
    todo: list[int]


@dataclass(eq=False)
class _Slot:
    seq_id: int
    # The tokens whose keys and values the cache holds for this sequence, from position 0.
    cached: list[int] = field(default_factory=list)
    active: _Active | None = None
    last_used: int = 0


class Batch:
    """The slots of one model and the step that advances them together."""

    def __init__(
        self,
        model: KVModel,
        text: decode_loop.TokenText,
        *,
        slots: int,
        context_size: int,
        model_name: str,
        batch_tokens: int = 512,
        observer: LoadObserver | None = None,
    ) -> None:
        if slots < 1:
            raise ValueError("a batch needs at least one slot")
        self._model = model
        self._text = text
        self._slots = [_Slot(seq_id=i) for i in range(slots)]
        self.context_size = context_size
        self.model_name = model_name
        self.batch_tokens = batch_tokens
        self.observer: LoadObserver = observer or NullLoadObserver()
        self._clock = itertools.count(1)

    @property
    def slots(self) -> int:
        return len(self._slots)

    @property
    def active(self) -> int:
        return sum(s.active is not None for s in self._slots)

    @property
    def free(self) -> int:
        return len(self._slots) - self.active

    # -- joining ------------------------------------------------------------------------

    def admit(
        self,
        tokens: list[int],
        params: GenerationParams,
        cancel: threading.Event,
        sink: SequenceSink,
        constraint: decode_loop.Constraint | None = None,
    ) -> None:
        """Starts a generation in a free slot; it runs from the next `step` on. Raises
        (PromptTooLongError, ...) before taking the slot if the request cannot run."""
        if not tokens:
            raise ModelError("empty prompt")
        seq = decode_loop.Sequence(
            self._text,
            tokens,
            params,
            cancel,
            context_size=self.context_size,
            model_name=self.model_name,
            constraint=constraint,
        )
        slot = self.claim(tokens)
        slot.active = _Active(seq, sink, tokens[len(slot.cached) :])

    def claim(self, tokens: list[int], keep: int | None = None) -> _Slot:
        """A free slot whose cache holds the longest prefix of `tokens` it can, at most
        `keep` tokens (default: all but the last, whose logits a generation needs): its
        own, or one copied from another slot. The slot's cache is cut to that prefix.
        ModelError if no slot is free."""
        free = [s for s in self._slots if s.active is None]
        if not free:
            raise ModelError("no free slot in the batch")
        limit = len(tokens) - 1 if keep is None else keep
        slot = max(free, key=lambda s: (min(common_prefix(s.cached, tokens), limit), -s.last_used))
        own = min(common_prefix(slot.cached, tokens), limit)
        donor, shared = slot, own
        for other in self._slots:
            if other is not slot:
                n = min(common_prefix(other.cached, tokens), limit)
                if n > shared:
                    donor, shared = other, n
        slot.last_used = next(self._clock)
        if (
            donor is not slot
            and shared - own >= MIN_COPIED_PREFIX
            and (self._model.complete_from_start(donor.seq_id))
        ):
            self._drop(slot, 0)
            self._model.copy(donor.seq_id, slot.seq_id, shared)
            slot.cached = donor.cached[:shared]
        else:
            reuse = own if own > 0 and self._model.complete_from_start(slot.seq_id) else 0
            self._drop(slot, reuse)
        self.observer.prefix(len(slot.cached), len(tokens))
        return slot

    def _drop(self, slot: _Slot, start: int) -> None:
        if start < len(slot.cached) and not self._model.remove(slot.seq_id, start):
            self._model.remove(slot.seq_id, 0)
            start = 0
        del slot.cached[start:]

    def release(self, slot: _Slot) -> None:
        """Gives back a slot claimed for work outside `step` (scoring)."""
        slot.active = None

    # -- stepping -----------------------------------------------------------------------

    def step(self) -> None:
        """One decode over every active sequence; ends those that are done."""
        for slot in self._slots:
            a = slot.active
            if a is not None and a.seq.cancel.is_set():
                a.seq.stop("cancelled")
                self._end(slot)
        tokens: list[int] = []
        positions: list[int] = []
        seq_ids: list[int] = []
        wants: list[bool] = []
        rows: list[_Slot] = []  # slots whose logits come back, in row order
        prefilling: list[_Slot] = []
        for slot in self._slots:
            a = slot.active
            if a is None:
                continue
            if a.todo:
                prefilling.append(slot)
                continue
            assert a.seq.next_token is not None
            tokens.append(a.seq.next_token)
            positions.append(len(slot.cached))
            seq_ids.append(slot.seq_id)
            wants.append(True)
            rows.append(slot)
        room = self.batch_tokens - len(tokens)
        # Prompts in the order their requests arrived (the slot claimed earliest first).
        chunks: list[tuple[_Slot, int]] = []
        for slot in sorted(prefilling, key=lambda s: s.last_used):
            if room <= 0:
                break
            a = slot.active
            assert a is not None
            n = min(room, len(a.todo))
            start = len(slot.cached)
            tokens.extend(a.todo[:n])
            positions.extend(range(start, start + n))
            seq_ids.extend([slot.seq_id] * n)
            last = n == len(a.todo)
            wants.extend([False] * (n - 1) + [last])
            if last:
                rows.append(slot)
            chunks.append((slot, n))
            room -= n
        if not tokens:
            return
        decoded = [s for s in rows if s.active is not None and not s.active.todo]
        try:
            logits = self._model.decode(tokens, positions, seq_ids, wants)
        except Exception as e:
            self._fail_all(e)
            return
        for slot in decoded:
            assert slot.active is not None and slot.active.seq.next_token is not None
            slot.cached.append(slot.active.seq.next_token)
        for slot, n in chunks:
            a = slot.active
            assert a is not None
            slot.cached.extend(a.todo[:n])
            del a.todo[:n]
        self.observer.step(len(decoded) + len(chunks), len(tokens))
        # Row i of `logits` belongs to rows[i] (decode rows first, then finished prompts).
        row_of = {id(s): i for i, s in enumerate(rows)}
        for slot in rows:
            a = slot.active
            assert a is not None
            try:
                chunk = a.seq.feed(logits[row_of[id(slot)]])
            except Exception as e:
                slot.active = None
                a.sink.error(e)
                continue
            if chunk is not None:
                a.sink.chunk(chunk)
            if a.seq.done:
                self._end(slot)

    def _end(self, slot: _Slot) -> None:
        a = slot.active
        assert a is not None
        slot.active = None
        tail = a.seq.tail()
        if tail is not None:
            a.sink.chunk(tail)
        a.sink.done(a.seq.completion())

    def _fail_all(self, error: BaseException) -> None:
        log.warning("batch decode failed (%s); ending its %d sequences", error, self.active)
        for slot in self._slots:
            self._drop(slot, 0)
            a = slot.active
            if a is not None:
                slot.active = None
                a.sink.error(error if isinstance(error, ModelError) else ModelError(str(error)))

    def stop_all(self, error: BaseException) -> None:
        """Ends every active sequence with `error` (the model is going away)."""
        for slot in self._slots:
            a = slot.active
            if a is not None:
                slot.active = None
                a.sink.error(error)
