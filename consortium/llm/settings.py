"""The [model] section of node.toml: which backend serves the node's model and how it
generates. Owned here so backend selection (consortium/llm/backends.py) does not depend
on the node's whole configuration."""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant. Answer briefly and accurately."

# Fields only the remote backend (backend = "openai") reads; refused for the others
# when they differ from their defaults.
REMOTE_ONLY = (
    "base_url",
    "fallback_base_urls",
    "api_key_file",
    "timeout_s",
    "connect_timeout_s",
    "retries",
)


class ModelSection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # openai: an OpenAI-compatible server the organization runs (vLLM, Ollama, llama.cpp).
    backend: Literal["llama_cpp", "transformers", "echo", "openai"] = "llama_cpp"
    # The model's name; for openai, the name the server serves it under (GET /v1/models).
    name: str = "smollm2-135m"
    # A GGUF file (llama_cpp), or a transformers model directory; overrides the registry.
    path: str = ""
    # For transformers: a GGUF file inside `path` loaded through from_pretrained(gguf_file=).
    gguf_file: str = ""
    # For openai: the server's context window (a prompt the server's tokenizer counts
    # beyond it is refused before it is sent); the server does not report it.
    context_size: Annotated[int, Field(ge=128, le=131072)] = 2048
    threads: Annotated[int, Field(ge=0, le=256)] = 0  # 0: llama.cpp picks
    # Requests the model serves at once: sequences in one running batch (llama_cpp), rows
    # of a batched generate (transformers), requests in flight to the server (openai).
    # 0: the backend's default (llm/backends.py DEFAULT_PARALLEL, 8; openai and
    # transformers: their modules' DEFAULT_PARALLEL, 8; echo: 1). Each request gets the
    # whole `context_size`; the KV cache holds parallel x context_size tokens.
    parallel: Annotated[int, Field(ge=0, le=64)] = 0
    # Requests that may wait for a slot; beyond it a request is refused at once
    # (HTTP 429 + Retry-After, gRPC RESOURCE_EXHAUSTED, JSON-RPC -32042).
    max_queue: Annotated[int, Field(ge=0, le=100_000)] = 64
    # The longest a request waits for a slot before it is refused (never silently dropped).
    queue_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    # The most slots one caller (an API key, the loopback user, one peer organization)
    # holds at once; 0: parallel - 1 when parallel > 1, else 1 (llm/worker.py SlotPolicy).
    caller_slots: Annotated[int, Field(ge=0, le=64)] = 0
    # The most slots all peers' escalations together hold at once; 0: half the slots,
    # rounded up. Local callers (API keys, the loopback user) keep the rest.
    peer_slots: Annotated[int, Field(ge=0, le=64)] = 0
    prompt_format: Literal["auto", "chat", "completion"] = "auto"
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    max_tokens: Annotated[int, Field(ge=1, le=32768)] = 128
    temperature: Annotated[float, Field(ge=0.0, le=5.0)] = 0.0
    # Echo backend only: pause between tokens (tests of cancellation).
    echo_token_delay_s: Annotated[float, Field(ge=0.0, le=10.0)] = 0.0
    # openai only: the server's API root, e.g. http://127.0.0.1:8080/v1 (required).
    base_url: str = ""
    # openai only: the same model served elsewhere (another replica of the server, or of
    # a Consortium node's /v1), tried in order when the current one cannot take a call.
    fallback_base_urls: Annotated[list[str], Field(max_length=16)] = Field(default_factory=list)
    # openai only: a file holding the server's API key (mode 0600; relative to node.toml's
    # directory); empty: the server needs no key.
    api_key_file: str = ""
    # openai only: the longest wait for the server's answer or, streaming, its next token.
    timeout_s: Annotated[float, Field(gt=0, le=3600)] = 120.0
    # openai only: the longest wait for a connection to the server.
    connect_timeout_s: Annotated[float, Field(gt=0, le=600)] = 5.0
    # openai only: how often a call the server cannot have acted on is tried again
    # (llm/openai_backend.py says which).
    retries: Annotated[int, Field(ge=0, le=10)] = 2

    @model_validator(mode="after")
    def _backend_fields(self) -> ModelSection:
        if self.backend != "openai":
            # By value, not by what the file set: a dumped and reloaded config holds all.
            fields = type(self).model_fields
            stray = [
                f
                for f in REMOTE_ONLY
                if getattr(self, f) != fields[f].get_default(call_default_factory=True)
            ]
            if stray:
                raise ValueError(
                    f"{', '.join('model.' + f for f in stray)} only apply to "
                    f'backend = "openai", not {self.backend!r}'
                )
            return self
        if not self.base_url:
            raise ValueError(
                'backend = "openai" needs model.base_url, the server\'s API root '
                "(e.g. http://127.0.0.1:8080/v1)"
            )
        check_base_url(self.base_url)
        for url in self.fallback_base_urls:
            check_base_url(url, key="model.fallback_base_urls")
        local = {
            "path": bool(self.path),
            "gguf_file": bool(self.gguf_file),
            "threads": self.threads != 0,
            "echo_token_delay_s": self.echo_token_delay_s != 0.0,
        }
        stray = [f for f, is_set in local.items() if is_set]
        if stray:
            raise ValueError(
                f"{', '.join('model.' + f for f in stray)} do not apply to "
                'backend = "openai" (the server loads and runs the model)'
            )
        return self


def check_base_url(url: str, key: str = "model.base_url") -> None:
    """An http(s) URL with a host, no query, fragment or credentials; ValueError if not."""
    try:
        parts = urlsplit(url)
        if parts.username or parts.password:
            # Not echoed: the URL holds a secret.
            raise ValueError(f"{key} must not hold credentials; use model.api_key_file")
        _ = parts.port  # raises on a bad port
    except ValueError as e:
        if "credentials" in str(e):
            raise
        raise ValueError(f"{key} {url!r} is not a valid URL: {e}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{key} {url!r} must be an http:// or https:// URL with a host")
    if parts.query or parts.fragment:
        raise ValueError(f"{key} {url!r} must not have a query or fragment")
