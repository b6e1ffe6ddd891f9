"""LLM backend on llama.cpp (llama-cpp-python) for GGUF files: the node's default.

The backend drives llama.cpp's C API through llama-cpp-python's low-level bindings: one
model, one context whose KV cache holds `parallel` sequences of context_size cells each,
and a `Batch` (llm/batching.py) that advances every running generation in one
`llama_decode` per token. The model's
worker (llm/worker.py) feeds the batch from its queue; a direct caller of
`stream_chat`/`stream_complete` runs one generation through the same batch alone.

It reads only the logits of the rows it samples from, so it reports per-token
log-probabilities without `logits_all` (which would hold n_ctx x n_vocab floats: 2 GiB
for Gemma-3's 262k vocabulary), stops between any two tokens when a task is cancelled,
and scores a question's multiple-choice options together in one decode over its stem read
once (llm/option_batch.py; the stem kept for the next question that shares it).

`response_format` (JSON output) runs llama.cpp's grammar sampler per sequence
(llm/grammar.py): the backend's `grammar` capability.
"""

from __future__ import annotations

import codecs
import dataclasses
import logging
import os
import threading
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from consortium.errors import ModelError, PromptTooLongError
from consortium.llm.base import (
    DEFAULT_CAPABILITIES,
    ChatMessage,
    Chunk,
    Completion,
    GenerationParams,
    ModelInfo,
)
from consortium.llm.batching import Batch, SequenceSink
from consortium.llm.grammar import GrammarConstraint, grammar_for
from consortium.llm.load import LoadObserver
from consortium.llm.option_batch import OPTION_SEQUENCES, Option, OptionBatch
from consortium.llm.sampling import Logits, common_prefix

log = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"


def system_info() -> str:
    import llama_cpp

    raw = llama_cpp.llama_print_system_info()
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def amx_repacking_possible() -> bool:
    """True when this llama.cpp build would repack weights for AMX on this CPU.

    That path segfaults on batched evaluation (ggml-org/llama.cpp#20824); the project's
    portable build never compiles it, but a native build on a Sapphire-Rapids-class CPU
    does, so the backend switches the extra buffer types off when it sees it.
    """
    return "AMX" in system_info()


def check_gguf_file(path: Path) -> None:
    """Fails early, with a clear message, on a missing, empty or non-GGUF file."""
    if not path.exists():
        raise ModelError(f"model file not found: {path}")
    if not path.is_file():
        raise ModelError(f"model path is not a file: {path}")
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise ModelError(f"model file is not a GGUF file (bad magic {magic!r}): {path}")


class LlamaCppBackend:
    """A GGUF model in llama.cpp. Not thread-safe: one thread drives it (ModelWorker)."""

    def __init__(
        self,
        path: Path,
        *,
        name: str,
        context_size: int = 2048,
        threads: int | None = None,
        batch_size: int = 512,
        chat: bool | None = None,
        parallel: int = 1,
        observer: LoadObserver | None = None,
    ) -> None:
        import llama_cpp
        from llama_cpp import _internals

        check_gguf_file(path)
        if parallel < 1:
            raise ModelError(f"parallel must be at least 1, not {parallel}")
        _init_llama_backend()
        model_params = llama_cpp.llama_model_default_params()
        if amx_repacking_possible():
            model_params.use_extra_bufts = False
        cores = len(os.sched_getaffinity(0))
        ctx_params = llama_cpp.llama_context_default_params()
        ctx_params.n_ctx = parallel * context_size
        ctx_params.n_batch = batch_size
        ctx_params.n_ubatch = batch_size
        ctx_params.n_seq_max = parallel
        ctx_params.n_threads = threads or max(cores // 2, 1)
        ctx_params.n_threads_batch = threads or cores
        # One KV stream per sequence (not one cache shared by all): a sequence's cells
        # then sit where they would if it ran alone, so attention sums in the same order
        # and a request's logits in a batch are bit for bit its logits alone.
        ctx_params.kv_unified = False
        # llama.cpp's default, as llama-server runs: flash attention where the build has
        # it (this CPU build does). 8 sequences decode ~1.26x faster with it than without
        # (Llama()'s setting, which earlier figures used); texts at temperature 0 may
        # differ from those at near-ties (README, "Concurrent serving").
        ctx_params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO
        ctx_params.no_perf = True
        self._ctx_params = ctx_params
        self._options: tuple[_Context, OptionBatch] | None = None
        try:
            self._model = _internals.LlamaModel(
                path_model=str(path), params=model_params, verbose=False
            )
            self._context = _Context(self._model, ctx_params, batch_size)
        except (ValueError, RuntimeError, OSError) as e:
            raise ModelError(f"cannot load model file {path}: {e}") from e
        self._n_vocab = self._model.n_vocab()
        self._eos = self._model.token_eos()
        self._pieces: dict[int, bytes] = {}
        metadata = self._model.metadata()
        template = metadata.get("tokenizer.chat_template", "")
        has_template = bool(template)
        if chat and not has_template:
            self.close()
            raise ModelError(f"model {name} has no chat template; use prompt_format = 'completion'")
        self._chat_formatter: Any = None
        if has_template:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            eos = self._model.detokenize([self._eos], special=True).decode(errors="replace")
            bos_id = self._model.token_bos()
            bos = (
                self._model.detokenize([bos_id], special=True).decode(errors="replace")
                if bos_id >= 0
                else ""
            )
            self._chat_formatter = Jinja2ChatFormatter(
                template=template, eos_token=eos, bos_token=bos, add_generation_prompt=True
            )
        self._info = ModelInfo(
            name=name,
            backend="llama_cpp",
            context_size=context_size,
            chat=has_template if chat is None else chat,
            path=str(path),
            capabilities=DEFAULT_CAPABILITIES | {"grammar"},
        )
        self.batch = Batch(
            self._context,
            _TokenText(self),
            slots=parallel,
            context_size=context_size,
            model_name=name,
            batch_tokens=batch_size,
            observer=observer,
        )

    @property
    def info(self) -> ModelInfo:
        return self._info

    def close(self) -> None:
        if self._options is not None:
            self._options[0].close()
        self._context.close()
        self._model.close()

    def count_tokens(self, text: str) -> int:
        return len(self._tokenize(text))

    def _tokenize(self, text: str) -> list[int]:
        return list(self._model.tokenize(text.encode(), add_bos=True, special=True))

    def render_chat(self, messages: Sequence[ChatMessage]) -> tuple[str, tuple[str, ...]]:
        if self._chat_formatter is None:
            raise ModelError(f"model {self._info.name} has no chat template")
        resp = self._chat_formatter(
            messages=[{"role": m.role, "content": m.content} for m in messages]
        )
        stops = resp.stop if isinstance(resp.stop, list) else ([resp.stop] if resp.stop else [])
        return resp.prompt, tuple(stops)

    def piece_bytes(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = bytes(self._model.detokenize([token]))
        return piece

    # -- generation -----------------------------------------------------------------------

    def start(
        self,
        messages: Sequence[ChatMessage] | None,
        prompt: str | None,
        params: GenerationParams,
        cancel: threading.Event,
        sink: SequenceSink,
    ) -> None:
        """Starts a generation in a free slot of the batch (chat `messages`, or a raw
        `prompt`); `step` advances it. Raises before taking a slot if it cannot run."""
        self._admit(*self._prepare(messages, prompt, params), cancel, sink)

    def _prepare(
        self,
        messages: Sequence[ChatMessage] | None,
        prompt: str | None,
        params: GenerationParams,
    ) -> tuple[list[int], GenerationParams, GrammarConstraint | None]:
        if prompt is None:
            text, template_stops = self.render_chat(messages or ())
            params = dataclasses.replace(params, stop=tuple(params.stop) + template_stops)
        else:
            text = prompt
        tokens = self._tokenize(text)
        constraint = None
        if params.response_format is not None:
            # Built now, so that a bad schema fails the request before any token.
            constraint = GrammarConstraint(
                self._model.vocab,
                self._n_vocab,
                grammar_for(params.response_format),
                end_token=self._eos,
            )
        return tokens, params, constraint

    def _admit(
        self,
        tokens: list[int],
        params: GenerationParams,
        constraint: GrammarConstraint | None,
        cancel: threading.Event,
        sink: SequenceSink,
    ) -> None:
        if constraint is not None:
            sink = _ClosingSink(sink, constraint)
        try:
            self.batch.admit(tokens, params, cancel, sink, constraint)
        except BaseException:
            if constraint is not None:
                constraint.close()
            raise

    def stream_chat(
        self, messages: Sequence[ChatMessage], params: GenerationParams, cancel: threading.Event
    ) -> Generator[Chunk, None, Completion]:
        return self._alone(*self._prepare(messages, None, params), cancel)

    def stream_complete(
        self, prompt: str, params: GenerationParams, cancel: threading.Event
    ) -> Generator[Chunk, None, Completion]:
        return self._alone(*self._prepare(None, prompt, params), cancel)

    def _alone(
        self,
        tokens: list[int],
        params: GenerationParams,
        constraint: GrammarConstraint | None,
        cancel: threading.Event,
    ) -> Generator[Chunk, None, Completion]:
        """One generation through the batch, driven by its caller (no worker): it joins
        the batch at the first `next`, so a generator never started holds no slot."""
        if self.batch.active:
            if constraint is not None:
                constraint.close()
            raise ModelError("the batch is driven by the model's worker; submit through it")
        sink = _Collect()
        self._admit(tokens, params, constraint, cancel, sink)
        try:
            while sink.completion is None:
                if sink.failure is not None:
                    raise sink.failure
                self.batch.step()
                yield from sink.take()
            yield from sink.take()
            return sink.completion
        finally:
            if sink.completion is None and sink.failure is None:
                # The caller stopped listening: free the slot at once.
                cancel.set()
                self.batch.step()

    # -- scoring --------------------------------------------------------------------------

    def score(self, prompt: str, continuations: Sequence[str]) -> list[float]:
        """Log-likelihood of each continuation after `prompt`: the stem (what all options
        share) read once, then the options together in one decode (llm/option_batch.py,
        in a context of its own made at the first question)."""
        prefix = self._tokenize(prompt)
        wholes = [self._tokenize(prompt + c) for c in continuations]
        for whole in wholes:
            if len(whole) > self._info.context_size:
                raise PromptTooLongError(
                    f"prompt and continuation exceed the context of {self._info.name}"
                )
        options = [Option(w, max(common_prefix(prefix, w), 1)) for w in wholes]
        todo = [i for i, o in enumerate(options) if o.common < len(o.whole)]
        results = [0.0] * len(wholes)
        if not todo:
            return results
        stem_len = min(options[i].common - 1 for i in todo)
        stem = wholes[todo[0]][:stem_len]
        scored = self._option_batch().score(stem, [options[i] for i in todo])
        for i, s in zip(todo, scored, strict=True):
            results[i] = s
        return results

    def _option_batch(self) -> OptionBatch:
        if self._options is None:
            import llama_cpp

            params = llama_cpp.llama_context_default_params()
            for name in ("n_batch", "n_ubatch", "n_threads", "n_threads_batch"):
                setattr(params, name, getattr(self._ctx_params, name))
            params.flash_attn_type = self._ctx_params.flash_attn_type
            params.no_perf = True
            params.n_ctx = self._info.context_size
            params.n_seq_max = OPTION_SEQUENCES + 1
            params.kv_unified = True
            try:
                context = _Context(self._model, params, self.batch.batch_tokens, unified=True)
            except ValueError as e:
                raise ModelError(f"cannot make a scoring context for {self._info.name}") from e
            self._options = (
                context,
                OptionBatch(
                    context,
                    cells=self._info.context_size,
                    batch_tokens=self.batch.batch_tokens,
                    observer=self.batch.observer,
                ),
            )
        return self._options[1]


def _init_llama_backend() -> None:
    global _backend_ready
    if not _backend_ready:
        import llama_cpp
        from llama_cpp._logger import set_verbose

        set_verbose(False)  # llama.cpp's own log lines: errors only
        llama_cpp.llama_backend_init()
        _backend_ready = True


_backend_ready = False


class _Context:
    """A llama.cpp context with several KV-cache sequences: the batch's `KVModel`."""

    def __init__(self, model: Any, params: Any, max_tokens: int, *, unified: bool = False) -> None:
        import llama_cpp

        self._lib = llama_cpp
        self._unified = unified
        ctx = llama_cpp.llama_init_from_model(model.model, params)
        if ctx is None:
            raise ValueError("llama.cpp could not create a context")
        self._ctx = ctx
        self._memory = llama_cpp.llama_get_memory(ctx)
        self._n_vocab = model.n_vocab()
        self._max = max_tokens
        batch = llama_cpp.llama_batch_init(max_tokens, 0, 1)
        self._batch = batch
        self._token = np.ctypeslib.as_array(batch.token, shape=(max_tokens,))
        self._pos = np.ctypeslib.as_array(batch.pos, shape=(max_tokens,))
        self._flags = np.ctypeslib.as_array(batch.logits, shape=(max_tokens,))
        np.ctypeslib.as_array(batch.n_seq_id, shape=(max_tokens,))[:] = 1
        self._seq = [batch.seq_id[i] for i in range(max_tokens)]

    def close(self) -> None:
        if self._ctx is not None:
            self._lib.llama_batch_free(self._batch)
            self._lib.llama_free(self._ctx)
            self._ctx = None

    def decode(
        self,
        tokens: Sequence[int],
        positions: Sequence[int],
        seq_ids: Sequence[int],
        logits: Sequence[bool],
    ) -> Logits:
        n = len(tokens)
        if not 0 < n <= self._max:
            raise ModelError(f"a batch of {n} tokens (at most {self._max})")
        self._token[:n] = tokens
        self._pos[:n] = positions
        self._flags[:n] = logits
        seq = self._seq
        for i, s in enumerate(seq_ids):
            seq[i][0] = s
        self._batch.n_tokens = n
        rc = self._lib.llama_decode(self._ctx, self._batch)
        if rc != 0:
            raise ModelError(f"llama_decode failed (code {rc})")
        rows = int(self._flags[:n].sum())
        if rows == 0:
            return np.empty((0, self._n_vocab), dtype=np.float32)
        ptr = self._lib.llama_get_logits(self._ctx)
        out: Logits = np.ctypeslib.as_array(ptr, shape=(rows, self._n_vocab))
        return out

    def remove(self, seq_id: int, start: int) -> bool:
        return bool(self._lib.llama_memory_seq_rm(self._memory, seq_id, start, -1))

    def copy(self, src: int, dst: int, length: int) -> None:
        if self._unified:  # the cells gain a sequence: nothing is moved
            self._lib.llama_memory_seq_cp(self._memory, src, dst, 0, length)
            return
        # Across streams llama.cpp copies a sequence whole (a copy of part of one aborts):
        # copy all, then cut.
        self._lib.llama_memory_seq_cp(self._memory, src, dst, -1, -1)
        self._lib.llama_memory_seq_rm(self._memory, dst, length, -1)

    def complete_from_start(self, seq_id: int) -> bool:
        return int(self._lib.llama_memory_seq_pos_min(self._memory, seq_id)) <= 0


class _TokenText:
    """The vocabulary side of a sequence: ends, pieces, an incremental UTF-8 decoder."""

    def __init__(self, backend: LlamaCppBackend) -> None:
        import llama_cpp

        self._backend = backend
        self._vocab = backend._model.vocab
        self._is_eog = llama_cpp.llama_vocab_is_eog
        self._ends: dict[int, bool] = {}

    def is_end(self, token: int) -> bool:
        end = self._ends.get(token)
        if end is None:
            end = self._ends[token] = bool(self._is_eog(self._vocab, token))
        return end

    def piece(self, token: int) -> str:
        return self._backend.piece_bytes(token).decode(errors="replace")

    def detokenizer(self) -> _Utf8Detokenizer:
        return _Utf8Detokenizer(self._backend)


class _Utf8Detokenizer:
    def __init__(self, backend: LlamaCppBackend) -> None:
        self._piece = backend.piece_bytes
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token: int) -> str:
        return str(self._decoder.decode(self._piece(token)))

    def flush(self) -> str:
        return str(self._decoder.decode(b"", final=True))


class _Collect:
    """A sink for a generation driven by its caller: chunks wait until taken."""

    def __init__(self) -> None:
        self.chunks: list[Chunk] = []
        self.completion: Completion | None = None
        self.failure: BaseException | None = None

    def chunk(self, chunk: Chunk) -> None:
        self.chunks.append(chunk)

    def done(self, completion: Completion) -> None:
        self.completion = completion

    def error(self, error: BaseException) -> None:
        self.failure = error

    def take(self) -> list[Chunk]:
        out, self.chunks = self.chunks, []
        return out


class _ClosingSink:
    """Frees a sequence's grammar sampler when the sequence ends, however it ends."""

    def __init__(self, sink: SequenceSink, constraint: GrammarConstraint) -> None:
        self._sink = sink
        self._constraint = constraint

    def chunk(self, chunk: Chunk) -> None:
        self._sink.chunk(chunk)

    def done(self, completion: Completion) -> None:
        self._constraint.close()
        self._sink.done(completion)

    def error(self, error: BaseException) -> None:
        self._constraint.close()
        self._sink.error(error)
