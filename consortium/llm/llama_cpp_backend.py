"""LLM backend on llama.cpp (llama-cpp-python) for GGUF files: the node's default.

The generation loop is our own, on top of llama-cpp-python's context: it reads the
last token's logits after each decode, so it can report per-token log-probabilities
without `logits_all` (which would hold n_ctx x n_vocab floats: 2 GiB for Gemma-3's
262k vocabulary), stop between any two tokens when a task is cancelled, and score
multiple-choice continuations in one batched decode.

`response_format` (JSON output) runs llama.cpp's grammar sampler in that same loop
(llm/grammar.py): the backend's `grammar` capability.
"""

from __future__ import annotations

import codecs
import contextlib
import dataclasses
import logging
import threading
from collections.abc import Generator, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from consortium.errors import ModelError, PromptTooLongError
from consortium.llm import decode_loop
from consortium.llm.base import (
    DEFAULT_CAPABILITIES,
    ChatMessage,
    Chunk,
    Completion,
    GenerationParams,
    ModelInfo,
)
from consortium.llm.grammar import GrammarConstraint, grammar_for
from consortium.llm.sampling import Logits, common_prefix, log_softmax

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


@contextlib.contextmanager
def _without_extra_buffer_types() -> Iterator[None]:
    # Llama() does not expose use_extra_bufts; it reads the defaults from this function.
    import llama_cpp.llama as llama_module

    bindings: Any = getattr(llama_module, "llama_cpp")  # noqa: B009 (not re-exported)
    original = bindings.llama_model_default_params

    def patched() -> Any:
        params = original()
        params.use_extra_bufts = False
        return params

    bindings.llama_model_default_params = patched
    try:
        yield
    finally:
        bindings.llama_model_default_params = original


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
    """A GGUF model in llama.cpp. Not thread-safe: one caller at a time (ModelWorker)."""

    def __init__(
        self,
        path: Path,
        *,
        name: str,
        context_size: int = 2048,
        threads: int | None = None,
        batch_size: int = 512,
        chat: bool | None = None,
    ) -> None:
        from llama_cpp import Llama

        check_gguf_file(path)
        guard = (
            _without_extra_buffer_types() if amx_repacking_possible() else contextlib.nullcontext()
        )
        try:
            with guard:
                self._llm = Llama(
                    model_path=str(path),
                    n_ctx=context_size,
                    n_batch=batch_size,
                    n_threads=threads,
                    n_threads_batch=threads,
                    logits_all=False,
                    verbose=False,
                )
        except (ValueError, RuntimeError, OSError) as e:
            raise ModelError(f"cannot load model file {path}: {e}") from e
        template = self._llm.metadata.get("tokenizer.chat_template", "")
        has_template = bool(template)
        if chat and not has_template:
            raise ModelError(f"model {name} has no chat template; use prompt_format = 'completion'")
        self._chat_formatter: Any = None
        if has_template:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            eos = self._llm.detokenize([self._llm.token_eos()], special=True).decode(
                errors="replace"
            )
            bos_id = self._llm.token_bos()
            bos = (
                self._llm.detokenize([bos_id], special=True).decode(errors="replace")
                if bos_id >= 0
                else ""
            )
            self._chat_formatter = Jinja2ChatFormatter(
                template=template, eos_token=eos, bos_token=bos, add_generation_prompt=True
            )
        self._n_vocab = self._llm.n_vocab()
        self._info = ModelInfo(
            name=name,
            backend="llama_cpp",
            context_size=context_size,
            chat=has_template if chat is None else chat,
            path=str(path),
            capabilities=DEFAULT_CAPABILITIES | {"grammar"},
        )

    @property
    def info(self) -> ModelInfo:
        return self._info

    def close(self) -> None:
        self._llm.close()

    def count_tokens(self, text: str) -> int:
        return len(self._tokenize(text))

    def _tokenize(self, text: str) -> list[int]:
        return list(self._llm.tokenize(text.encode(), add_bos=True, special=True))

    def render_chat(self, messages: Sequence[ChatMessage]) -> tuple[str, tuple[str, ...]]:
        if self._chat_formatter is None:
            raise ModelError(f"model {self._info.name} has no chat template")
        resp = self._chat_formatter(
            messages=[{"role": m.role, "content": m.content} for m in messages]
        )
        stops = resp.stop if isinstance(resp.stop, list) else ([resp.stop] if resp.stop else [])
        return resp.prompt, tuple(stops)

    def stream_chat(
        self, messages: Sequence[ChatMessage], params: GenerationParams, cancel: threading.Event
    ) -> Generator[Chunk, None, Completion]:
        prompt, template_stops = self.render_chat(messages)
        merged = dataclasses.replace(params, stop=tuple(params.stop) + template_stops)
        return self._generate(self._tokenize(prompt), merged, cancel)

    def stream_complete(
        self, prompt: str, params: GenerationParams, cancel: threading.Event
    ) -> Generator[Chunk, None, Completion]:
        return self._generate(self._tokenize(prompt), params, cancel)

    def _piece(self, token: int) -> str:
        return bytes(self._llm.detokenize([token])).decode(errors="replace")

    def _last_logits(self) -> npt.NDArray[np.float32]:
        ptr = self._llm._ctx.get_logits()
        return np.ctypeslib.as_array(ptr, shape=(self._n_vocab,)).astype(np.float32, copy=True)

    def _generate(
        self, tokens: list[int], params: GenerationParams, cancel: threading.Event
    ) -> Generator[Chunk, None, Completion]:
        if params.response_format is None:
            return decode_loop.generate(_LlamaDecoder(self), tokens, params, cancel)
        # Built now, so that a bad schema fails the request before any token.
        constraint = GrammarConstraint(
            self._llm._model.vocab,
            self._n_vocab,
            grammar_for(params.response_format),
            end_token=self._llm.token_eos(),
        )
        return self._generate_constrained(tokens, params, cancel, constraint)

    def _generate_constrained(
        self,
        tokens: list[int],
        params: GenerationParams,
        cancel: threading.Event,
        constraint: GrammarConstraint,
    ) -> Generator[Chunk, None, Completion]:
        try:
            return (
                yield from decode_loop.generate(
                    _LlamaDecoder(self), tokens, params, cancel, constraint
                )
            )
        finally:
            constraint.close()

    def score(self, prompt: str, continuations: Sequence[str]) -> list[float]:
        llm = self._llm
        prefix = self._tokenize(prompt)
        llm.reset()
        if len(prefix) > 1:
            llm.eval(prefix[:-1])  # shared by all continuations; only the last logits kept
        results: list[float] = []
        for continuation in continuations:
            whole = self._tokenize(prompt + continuation)
            if len(whole) > self._info.context_size:
                raise PromptTooLongError(
                    f"prompt and continuation exceed the context of {self._info.name}"
                )
            common = max(common_prefix(prefix, whole), 1)
            if common >= len(whole):
                results.append(0.0)
                continue
            cached = list(llm.input_ids[: llm.n_tokens])
            n_past = min(common_prefix(cached, whole), common - 1)
            # Row i of the logits predicts whole[n_past + 1 + i].
            rows = self._decode_with_all_logits(whole[n_past:-1], n_past=n_past)
            lps = log_softmax(rows)
            first = common - 1 - n_past
            targets = whole[common:]
            results.append(float(sum(lps[first + i, t] for i, t in enumerate(targets))))
        return results

    def _decode_with_all_logits(self, tokens: list[int], n_past: int) -> npt.NDArray[np.float32]:
        llm = self._llm
        llm.n_tokens = n_past
        llm._ctx.kv_cache_seq_rm(-1, n_past, -1)
        out: list[npt.NDArray[np.float32]] = []
        for i in range(0, len(tokens), llm.n_batch):
            batch = tokens[i : i + llm.n_batch]
            llm._batch.set_batch(batch=batch, n_past=llm.n_tokens, logits_all=True)
            llm._ctx.decode(llm._batch)
            logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(len(batch), self._n_vocab))
            out.append(logits.astype(np.float32, copy=True))
            llm.input_ids[llm.n_tokens : llm.n_tokens + len(batch)] = batch
            llm.n_tokens += len(batch)
        return np.concatenate(out, axis=0)


class _Utf8Detokenizer:
    def __init__(self, backend: LlamaCppBackend) -> None:
        self._llm = backend._llm
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token: int) -> str:
        return str(self._decoder.decode(bytes(self._llm.detokenize([token]))))

    def flush(self) -> str:
        return str(self._decoder.decode(b"", final=True))


class _LlamaDecoder:
    def __init__(self, backend: LlamaCppBackend) -> None:
        self._backend = backend
        self._llm = backend._llm
        self.model_name = backend.info.name
        self.context_size = backend.info.context_size
        model = self._llm._model
        self._eog = getattr(model, "token_is_eog", None)
        self._eos = self._llm.token_eos()

    def prefill(self, tokens: list[int]) -> Logits:
        # Reuse the KV cache for the prefix this prompt shares with the previous request
        # (system prompt, few-shot examples); at least the last token is evaluated again
        # so that its logits are fresh.
        llm = self._llm
        reuse = min(common_prefix(list(llm.input_ids[: llm.n_tokens]), tokens), len(tokens) - 1)
        if reuse > 0 and llm._ctx.kv_cache_seq_rm(-1, reuse, -1):
            llm.n_tokens = reuse
        else:
            llm.reset()
            reuse = 0
        llm.eval(tokens[reuse:])
        return self._backend._last_logits()

    def advance(self, token: int) -> Logits:
        self._llm.eval([token])
        return self._backend._last_logits()

    def is_end(self, token: int) -> bool:
        return bool(self._eog(token)) if self._eog is not None else token == self._eos

    def piece(self, token: int) -> str:
        return self._backend._piece(token)

    def detokenizer(self) -> _Utf8Detokenizer:
        return _Utf8Detokenizer(self._backend)
