"""LLM backend on Hugging Face transformers (the `[transformers]` extra), on the CPU.

Loads a model directory, or a GGUF file through `from_pretrained(dir, gguf_file=...)`
(dequantised to float32 by transformers). Runs the same decode loop as the llama.cpp
backend with the model's KV cache, so streaming, log-probabilities, stop strings and
cancellation behave alike.
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


class TransformersBackend:
    def __init__(
        self,
        directory: Path,
        *,
        name: str,
        gguf_file: str | None = None,
        context_size: int = 2048,
        threads: int | None = None,
    ) -> None:
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
        self._info = ModelInfo(
            name=name,
            backend="transformers",
            context_size=context_size,
            chat=bool(getattr(self._tok, "chat_template", None)),
            path=str(directory / gguf_file) if gguf_file else str(directory),
        )

    @property
    def info(self) -> ModelInfo:
        return self._info

    def close(self) -> None:
        pass

    def tokenize(self, text: str) -> list[int]:
        return list(self._tok(text)["input_ids"])

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text))

    def stream_chat(
        self, messages: Sequence[ChatMessage], params: GenerationParams, cancel: threading.Event
    ) -> Generator[Chunk, None, Completion]:
        refuse_response_format(params, "transformers")
        if not self._info.chat:
            raise ModelError(f"model {self._info.name} has no chat template")
        ids: Any = self._tok.apply_chat_template(
            [{"role": m.role, "content": m.content} for m in messages],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
        )
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return decode_loop.generate(_TorchDecoder(self), [int(t) for t in ids], params, cancel)

    def stream_complete(
        self, prompt: str, params: GenerationParams, cancel: threading.Event
    ) -> Generator[Chunk, None, Completion]:
        refuse_response_format(params, "transformers")
        return decode_loop.generate(_TorchDecoder(self), self.tokenize(prompt), params, cancel)

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
            with torch.no_grad():
                logits = self._model(input_ids=torch.tensor([whole])).logits[0]
            lps = log_softmax(logits.float().numpy())
            results.append(float(sum(lps[i - 1, whole[i]] for i in range(common, len(whole)))))
        return results


class _TextDiffDetokenizer:
    """Decodes the whole output each time and emits what is new (keeps spaces right)."""

    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer
        self._ids: list[int] = []
        self._emitted = ""

    def feed(self, token: int) -> str:
        self._ids.append(token)
        text = str(self._tok.decode(self._ids, skip_special_tokens=True))
        if text.endswith("\ufffd"):  # an incomplete UTF-8 character: wait for the rest
            return ""
        new = text[len(self._emitted) :]
        self._emitted = text
        return new

    def flush(self) -> str:
        text = str(self._tok.decode(self._ids, skip_special_tokens=True))
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
        with torch.no_grad():
            out = self._b._model(input_ids=torch.tensor([ids]), cache=self._past, use_cache=True)
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
        return str(self._b._tok.decode([token]))

    def detokenizer(self) -> _TextDiffDetokenizer:
        return _TextDiffDetokenizer(self._b._tok)
