"""Chooses and builds the LLM backend a node.toml asks for (wiring, at the edge)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from consortium.errors import ConfigError
from consortium.node.config import NodeConfig
from consortium.node.llm.base import LLMBackend
from consortium.node.llm.registry import resolve_model_file


def backend_factory(config: NodeConfig) -> Callable[[], LLMBackend]:
    """A callable that loads the configured model (run on the model's worker thread)."""
    m = config.model
    threads = m.threads or None
    if m.backend == "echo":
        from consortium.node.llm.echo import EchoBackend

        return lambda: EchoBackend(
            m.name, token_delay_s=m.echo_token_delay_s, context_size=m.context_size
        )
    if m.backend == "llama_cpp":
        path = config.resolve(m.path) if m.path else None

        def load_llama() -> LLMBackend:
            from consortium.node.llm.llama_cpp_backend import LlamaCppBackend

            file = path or resolve_model_file(m.name, None)
            chat = None if m.prompt_format == "auto" else m.prompt_format == "chat"
            return LlamaCppBackend(
                file, name=m.name, context_size=m.context_size, threads=threads, chat=chat
            )

        return load_llama
    if m.backend == "transformers":
        if not m.path:
            raise ConfigError("the transformers backend needs a model directory", key="model.path")
        directory = config.resolve(m.path)

        def load_transformers() -> LLMBackend:
            from consortium.node.llm.transformers_backend import TransformersBackend

            return TransformersBackend(
                Path(directory),
                name=m.name,
                gguf_file=m.gguf_file or None,
                context_size=m.context_size,
                threads=threads,
            )

        return load_transformers
    raise ConfigError(f"unknown backend {m.backend!r}", key="model.backend")
