"""Chooses and builds the LLM backend a node.toml's [model] section asks for."""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path

from consortium.errors import ConfigError
from consortium.llm.base import LLMBackend
from consortium.llm.registry import resolve_model_file
from consortium.llm.settings import ModelSection

# Requests a llama.cpp model serves at once when [model] parallel is 0: chosen from
# benchmarks/concurrency.py (README, "Concurrent serving").
DEFAULT_PARALLEL = 8


def backend_factory(m: ModelSection, base_dir: Path) -> Callable[[], LLMBackend]:
    """A callable that loads the configured model (run on the model's worker thread);
    relative paths in the section are relative to base_dir (the node.toml's directory)."""
    threads = m.threads or None
    if m.backend == "echo":
        from consortium.llm.echo import EchoBackend

        return lambda: EchoBackend(
            m.name,
            token_delay_s=m.echo_token_delay_s,
            context_size=m.context_size,
            parallel=m.parallel or 1,
        )
    if m.backend == "llama_cpp":
        path = _resolve(base_dir, m.path) if m.path else None

        def load_llama() -> LLMBackend:
            from consortium.llm.llama_cpp_backend import LlamaCppBackend

            file = path or resolve_model_file(m.name, None)
            chat = None if m.prompt_format == "auto" else m.prompt_format == "chat"
            return LlamaCppBackend(
                file,
                name=m.name,
                context_size=m.context_size,
                threads=threads,
                chat=chat,
                parallel=m.parallel or DEFAULT_PARALLEL,
            )

        return load_llama
    if m.backend == "transformers":
        if not m.path:
            raise ConfigError("the transformers backend needs a model directory", key="model.path")
        directory = _resolve(base_dir, m.path)

        def load_transformers() -> LLMBackend:
            from consortium.llm.transformers_backend import (
                DEFAULT_PARALLEL as TRANSFORMERS_PARALLEL,
            )
            from consortium.llm.transformers_backend import TransformersBackend

            return TransformersBackend(
                Path(directory),
                name=m.name,
                gguf_file=m.gguf_file or None,
                context_size=m.context_size,
                threads=threads,
                parallel=m.parallel or TRANSFORMERS_PARALLEL,
            )

        return load_transformers
    if m.backend == "openai":
        key_file = _resolve(base_dir, m.api_key_file) if m.api_key_file else None

        def load_remote() -> LLMBackend:
            from consortium.llm.openai_backend import DEFAULT_PARALLEL as REMOTE_PARALLEL
            from consortium.llm.openai_backend import OpenAIBackend

            return OpenAIBackend(
                m.base_url,
                name=m.name,
                context_size=m.context_size,
                api_key=read_api_key(key_file) if key_file else None,
                timeout_s=m.timeout_s,
                connect_timeout_s=m.connect_timeout_s,
                retries=m.retries,
                chat=m.prompt_format != "completion",
                parallel=m.parallel or REMOTE_PARALLEL,
                fallback_base_urls=m.fallback_base_urls,
            )

        return load_remote
    raise ConfigError(f"unknown backend {m.backend!r}", key="model.backend")


def read_api_key(path: Path) -> str:
    """The model server's API key from `model.api_key_file`: one line, in a file only its
    owner can read (mode 0600), as the node's private keys are; ConfigError otherwise.
    The key itself is never put in an error or a log line."""
    where = {"path": str(path), "key": "model.api_key_file"}
    if not path.is_file():
        raise ConfigError("API key file not found", **where)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"API key file is readable by others (mode {mode:04o}); run: chmod 600 {path}",
            **where,
        )
    try:
        lines = path.read_text().strip().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read the API key file: {type(e).__name__}", **where) from None
    if len(lines) != 1 or not lines[0].strip() or any(c.isspace() for c in lines[0].strip()):
        raise ConfigError("the API key file must hold the key alone, on one line", **where)
    return lines[0].strip()


def _resolve(base_dir: Path, path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else base_dir / p
