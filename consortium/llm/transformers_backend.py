"""LLM backend on Hugging Face transformers (the `[transformers]` extra), on the CPU.

Loads a model directory, or a GGUF file through `from_pretrained(dir, gguf_file=...)`
(dequantised to float32 by transformers). Runs the same decode loop as the llama.cpp
backend with the model's KV cache, so streaming, log-probabilities, stop strings and
cancellation behave alike.

With `parallel` > 1 the backend serves that many requests at once (`info.concurrency`:
the worker calls it from as many threads) and generates the requests waiting together
in one batch (transformers_batch.py: one padded forward pass per step for all of them);
benchmarks/transformers_batching.py measured the gain. The tokenizer and the model are
shared by those threads: tokenizer calls hold `_tok_lock` (a fast tokenizer refuses
concurrent use), forward passes `_forward_lock`.
"""

from __future__ import annotations

import threading
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from consortium.errors import ModelError, PromptTooLongError
from consortium.llm import decode_loop
from consortium.llm.base import (
    ChatMessage,
    Chunk,
    Completion,
    GenerationParams,
    ModelInfo,
    refuse_response_format,
)
from consortium.llm.sampling import Logits, common_prefix, log_softmax
from consortium.llm.transformers_batch import BatchRunner, Row

# Requests served at once when `model.parallel` is 0 (benchmarks/transformers_batching.py).
DEFAULT_PARALLEL = 8


class TransformersBackend:
    def __init__(
        self,
        directory: Path,
        *,
        name: str,
        gguf_file: str | None = None,
        context_size: int = 2048,
        threads: int | None = None,
        parallel: int = 1,
    ) -> None:
        if parallel < 1:
            raise ValueError(f"parallel must be at least 1, not {parallel}")
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as e:
            raise ModelError(
                "the transformers backend needs the [transformers] extra: "
                "pip install 'consortium[transformers]'"
            ) from e
        if not directory.is_dir():
            raise ModelError(f"model directory not found: {directory}")
        if gguf_file and not (directory / gguf_file).is_file():
            raise ModelError(f"GGUF file not found: {directory / gguf_file}")
        if threads:
            torch.set_num_threads(threads)
        kwargs: dict[str, Any] = {"gguf_file": gguf_file} if gguf_file else {}
        try:
            self._tok = AutoTokenizer.from_pretrained(str(directory), **kwargs)
            self._model = AutoModelForCausalLM.from_pretrained(
                str(directory), dtype=torch.float32, **kwargs
            )
        except (OSError, ValueError, RuntimeError, KeyError) as e:
            raise ModelError(f"cannot load transformers model from {directory}: {e}") from e
        self._model.eval()
        self._torch = torch
        eos = self._model.generation_config.eos_token_id
        if eos is None:
            eos = self._tok.eos_token_id
        eos_ids = eos if isinstance(eos, list) else [eos] if eos is not None else []
        self._eos: set[int] = set(eos_ids)
        self._tok_lock = threading.Lock()
        self._forward_lock = threading.Lock()
        self._info = ModelInfo(
            name=name,
            backend="transformers",
            context_size=context_size,
            chat=bool(getattr(self._tok, "chat_template", None)),
            path=str(directory / gguf_file) if gguf_file else str(directory),
            concurrency=parallel,
        )
        self._runner: BatchRunner | None = None
        if parallel > 1:
            pad = self._tok.pad_token_id
            if pad is None:
                pad = eos_ids[0] if eos_ids else 0
            # Padding is masked out, so any token id serves.
            self._runner = BatchRunner(self._model, torch, parallel, int(pad), self._forward_lock)

    @property
    def info(self) -> ModelInfo:
        return self._info

    @property
    def runner(self) -> BatchRunner | None:
        """The batch thread (None with `parallel` = 1)."""
        return self._runner

    def close(self) -> None:
        if self._runner is not None:
            self._runner.close()

    def tokenize(self, text: str) -> list[int]:
        with self._tok_lock:
            return list(self._tok(text)["input_ids"])

    def decode(self, tokens: list[int]) -> str:
        with self._tok_lock:
            return str(self._tok.decode(tokens, skip_special_tokens=True))

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text))

    def stream_chat(
        self, messages: Sequence[ChatMessage], params: GenerationParams, cancel: threading.Event
    ) -> Generator[Chunk, None, Completion]:
        refuse_response_format(params, "transformers")
        if not self._info.chat:
            raise ModelError(f"model {self._info.name} has no chat template")
        with self._tok_lock:
            ids: Any = self._tok.apply_chat_template(
                [{"role": m.role, "content": m.content} for m in messages],
                add_generation_prompt=True,
                tokenize=True,
                return_dict=False,
            )
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return self._generate([int(t) for t in ids], params, cancel)

    def stream_complete(
        self, prompt: str, params: GenerationParams, cancel: threading.Event
    ) -> Generator[Chunk, None, Completion]:
        refuse_response_format(params, "transformers")
        return self._generate(self.tokenize(prompt), params, cancel)

    def _generate(
        self, tokens: list[int], params: GenerationParams, cancel: threading.Event
    ) -> Generator[Chunk, None, Completion]:
        if self._runner is None:
            return decode_loop.generate(_TorchDecoder(self), tokens, params, cancel)
        return self._batched(self._runner, tokens, params, cancel)

    def _batched(
        self,
        runner: BatchRunner,
        tokens: list[int],
        params: GenerationParams,
        cancel: threading.Event,
    ) -> Generator[Chunk, None, Completion]:
        decoder = _BatchedDecoder(self, runner)
        try:
            return (yield from decode_loop.generate(decoder, tokens, params, cancel))
        finally:
            decoder.leave()  # however the loop ended: the batch goes on without it

    def score(self, prompt: str, continuations: Sequence[str]) -> list[float]:
        torch = self._torch
        prefix = self.tokenize(prompt)
        results: list[float] = []
        for continuation in continuations:
            whole = self.tokenize(prompt + continuation)
            if len(whole) > self._info.context_size:
                raise PromptTooLongError(
                    f"prompt and continuation exceed the context of {self._info.name}"
                )
            common = max(common_prefix(prefix, whole), 1)
            with self._forward_lock, torch.no_grad():
                logits = self._model(input_ids=torch.tensor([whole])).logits[0]
            lps = log_softmax(logits.float().numpy())
            results.append(float(sum(lps[i - 1, whole[i]] for i in range(common, len(whole)))))
        return results


class _TextDiffDetokenizer:
    """Decodes the whole output each time and emits what is new (keeps spaces right)."""

    def __init__(self, backend: TransformersBackend) -> None:
        self._b = backend
        self._ids: list[int] = []
        self._emitted = ""

    def feed(self, token: int) -> str:
        self._ids.append(token)
        text = self._b.decode(self._ids)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 character: wait for the rest
            return ""
        new = text[len(self._emitted) :]
        self._emitted = text
        return new

    def flush(self) -> str:
        text = self._b.decode(self._ids)
        new = text[len(self._emitted) :]
        self._emitted = text
        return new


class _TorchDecoder:
    def __init__(self, backend: TransformersBackend) -> None:
        self._b = backend
        self._past: Any = None
        self.model_name = backend.info.name
        self.context_size = backend.info.context_size

    def _forward(self, ids: list[int]) -> Logits:
        torch = self._b._torch
        with self._b._forward_lock, torch.no_grad():
            out = self._b._model(
                input_ids=torch.tensor([ids]), cache=self._past, use_cache=True, logits_to_keep=1
            )
        self._past = out.cache
        logits: Logits = out.logits[0, -1].float().numpy().astype(np.float32)
        return logits

    def prefill(self, tokens: list[int]) -> Logits:
        self._past = None
        return self._forward(tokens)

    def advance(self, token: int) -> Logits:
        return self._forward([token])

    def is_end(self, token: int) -> bool:
        return token in self._b._eos

    def piece(self, token: int) -> str:
        with self._b._tok_lock:
            return str(self._b._tok.decode([token]))

    def detokenizer(self) -> _TextDiffDetokenizer:
        return _TextDiffDetokenizer(self._b)


class _BatchedDecoder(_TorchDecoder):
    """One request's decoder in the batch thread's batch: its forward passes are the
    batch's (transformers_batch.py)."""

    def __init__(self, backend: TransformersBackend, runner: BatchRunner) -> None:
        super().__init__(backend)
        self._runner = runner
        self._row: Row | None = None

    def prefill(self, tokens: list[int]) -> Logits:
        self._row = self._runner.join(tokens)
        return self._runner.wait(self._row)

    def advance(self, token: int) -> Logits:
        assert self._row is not None
        self._runner.advance(self._row, token)
        return self._runner.wait(self._row)

    def leave(self) -> None:
        if self._row is not None:
            self._runner.leave(self._row)
