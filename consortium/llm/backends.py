"""Chooses and builds the LLM backend a node.toml's [model] section asks for."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from consortium.errors import ConfigError
from consortium.llm.base import LLMBackend
from consortium.llm.registry import resolve_model_file
from consortium.llm.settings import ModelSection


def backend_factory(m: ModelSection, base_dir: Path) -> Callable[[], LLMBackend]:
    """A callable that loads the configured model (run on the model's worker thread);
    relative paths in the section are relative to base_dir (the node.toml's directory)."""
    threads = m.threads or None
    if m.backend == "echo":
        from consortium.llm.echo import EchoBackend

        return lambda: EchoBackend(
            m.name, token_delay_s=m.echo_token_delay_s, context_size=m.context_size
        )
    if m.backend == "llama_cpp":
        path = _resolve(base_dir, m.path) if m.path else None

        def load_llama() -> LLMBackend:
            from consortium.llm.llama_cpp_backend import LlamaCppBackend

            file = path or resolve_model_file(m.name, None)
            chat = None if m.prompt_format == "auto" else m.prompt_format == "chat"
            return LlamaCppBackend(
                file, name=m.name, context_size=m.context_size, threads=threads, chat=chat
            )

        return load_llama
    if m.backend == "transformers":
        if not m.path:
            raise ConfigError("the transformers backend needs a model directory", key="model.path")
        directory = _resolve(base_dir, m.path)

        def load_transformers() -> LLMBackend:
            from consortium.llm.transformers_backend import TransformersBackend

            return TransformersBackend(
                Path(directory),
                name=m.name,
                gguf_file=m.gguf_file or None,
                context_size=m.context_size,
                threads=threads,
            )

        return load_transformers
    raise ConfigError(f"unknown backend {m.backend!r}", key="model.backend")


def _resolve(base_dir: Path, path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else base_dir / p
