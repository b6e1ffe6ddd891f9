"""The [model] section of node.toml: which backend serves the node's model and how it
generates. Owned here so backend selection (consortium/llm/backends.py) does not depend
on the node's whole configuration."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant. Answer briefly and accurately."


class ModelSection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["llama_cpp", "transformers", "echo"] = "llama_cpp"
    name: str = "smollm2-135m"
    # A GGUF file (llama_cpp), or a transformers model directory; overrides the registry.
    path: str = ""
    # For transformers: a GGUF file inside `path` loaded through from_pretrained(gguf_file=).
    gguf_file: str = ""
    context_size: Annotated[int, Field(ge=128, le=131072)] = 2048
    threads: Annotated[int, Field(ge=0, le=256)] = 0  # 0: llama.cpp picks
    prompt_format: Literal["auto", "chat", "completion"] = "auto"
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    max_tokens: Annotated[int, Field(ge=1, le=32768)] = 128
    temperature: Annotated[float, Field(ge=0.0, le=5.0)] = 0.0
    # Echo backend only: pause between tokens (tests of cancellation).
    echo_token_delay_s: Annotated[float, Field(ge=0.0, le=10.0)] = 0.0
