"""Option scoring through a remote server's prompt log-probabilities matches the local
llama.cpp backend on the same model: llama-cpp-python's `llama_cpp.server` with
`logits_all` on the bundled Gemma-3-270M (a model with a BOS token, whose prompt
log-probabilities that server aligns correctly; see test_openai_backend.py for SmolLM2,
whose it does not). Short prompts: that server sorts the whole 262k vocabulary for each
prompt token."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from consortium.llm.llama_cpp_backend import LlamaCppBackend
from consortium.llm.openai_backend import OpenAIBackend
from tests.helpers import benchmark_module

NAME = "gemma3-270m"

# ~35 s (the server sorts the 262k vocabulary per prompt token): not in the quick run.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def remote(gemma_path: Path) -> Iterator[OpenAIBackend]:
    with benchmark_module("llama_server").llama_server(
        gemma_path,
        n_ctx=128,
        logits_all=True,
        model_alias=NAME,
        # As the local backend runs (llama.cpp's default; Llama() turns it off).
        extra_args=("--flash_attn", "True"),
    ) as base_url:
        backend = OpenAIBackend(base_url, name=NAME, context_size=128, chat=False)
        yield backend
        backend.close()


def test_option_scores_match_the_local_backend(remote: OpenAIBackend, gemma_path: Path) -> None:
    assert remote.info.capabilities == {"token_logprobs", "option_scoring"}
    assert not remote.info.chat
    prompt, options = "The capital of France is", [" Paris", " Berlin", " a city"]
    local = LlamaCppBackend(gemma_path, name=NAME, context_size=128, threads=2)
    try:
        want = local.score(prompt, options)
    finally:
        local.close()
    got = remote.score(prompt, options)
    assert got.index(max(got)) == want.index(max(want))
    assert got == pytest.approx(want, abs=0.05)
    assert remote.score(prompt, [""]) == [0.0]
