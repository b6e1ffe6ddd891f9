"""Real llama.cpp inference on both bundled models (short prompts, few tokens)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from consortium.errors import ModelError, PromptTooLongError
from consortium.llm.base import ChatMessage, GenerationParams
from consortium.llm.llama_cpp_backend import LlamaCppBackend
from consortium.llm.prompts import completion_prompt
from consortium.llm.settings import DEFAULT_SYSTEM_PROMPT
from tests.helpers import drain


@pytest.fixture(scope="module")
def smollm(smollm_path: Path) -> LlamaCppBackend:
    return LlamaCppBackend(smollm_path, name="smollm2-135m", context_size=512, threads=2)


@pytest.fixture(scope="module")
def gemma(gemma_path: Path) -> LlamaCppBackend:
    return LlamaCppBackend(gemma_path, name="gemma3-270m", context_size=512, threads=2)


def test_chat_streams_the_answer_with_usage_and_logprobs(smollm: LlamaCppBackend) -> None:
    params = GenerationParams(max_tokens=24, logprobs=True, top_logprobs=3)
    chunks, done = drain(
        smollm.stream_chat(
            [
                ChatMessage("system", DEFAULT_SYSTEM_PROMPT),
                ChatMessage("user", "What is the capital of France?"),
            ],
            params,
            threading.Event(),
        )
    )
    assert smollm.info.chat
    assert done.text == "".join(c.text for c in chunks)
    assert "Paris" in done.text
    assert 0 < done.usage.output_tokens <= 24
    assert done.usage.input_tokens > 5
    assert len(done.logprobs) == done.usage.output_tokens
    assert all(lp.logprob <= 0.0 for lp in done.logprobs)
    # The chosen token is the most likely at temperature 0, so it heads the alternatives.
    first = done.logprobs[0]
    assert len(first.top) == 3 and first.top[0][1] == pytest.approx(first.logprob, abs=1e-5)
    assert done.timings.total_s >= done.timings.prompt_s > 0


def test_max_tokens_ends_with_length(smollm: LlamaCppBackend) -> None:
    _, done = drain(
        smollm.stream_complete(
            "Once upon a time", GenerationParams(max_tokens=5), threading.Event()
        )
    )
    assert done.finish_reason == "length"
    assert done.usage.output_tokens == 5


def test_stop_string_is_not_in_the_output(gemma: LlamaCppBackend) -> None:
    params = GenerationParams(max_tokens=40, stop=("\n",))
    _, done = drain(
        gemma.stream_complete(
            completion_prompt("What is the capital of France?"), params, threading.Event()
        )
    )
    assert done.finish_reason == "stop"
    assert "\n" not in done.text
    assert "Paris" in done.text


def test_base_model_has_no_chat_template(gemma: LlamaCppBackend) -> None:
    assert not gemma.info.chat
    with pytest.raises(ModelError):
        drain(
            gemma.stream_chat(
                [ChatMessage("user", "hi")], GenerationParams(max_tokens=2), threading.Event()
            )
        )


@pytest.mark.parametrize("model", ["smollm", "gemma"])
def test_score_prefers_the_right_answer(model: str, request: pytest.FixtureRequest) -> None:
    backend: LlamaCppBackend = request.getfixturevalue(model)
    scores = backend.score(
        "Question: What is the capital of France?\nAnswer:", [" Paris", " Berlin", " a banana"]
    )
    assert all(s < 0 for s in scores)
    assert scores[0] == max(scores)


def test_score_matches_generation_logprobs(smollm: LlamaCppBackend) -> None:
    # The batched scorer and the decode loop must agree on the same tokens.
    prompt = "The capital of France is"
    _, done = drain(
        smollm.stream_complete(
            prompt, GenerationParams(max_tokens=3, logprobs=True), threading.Event()
        )
    )
    scored = smollm.score(prompt, [done.text])[0]
    assert scored == pytest.approx(sum(lp.logprob for lp in done.logprobs), abs=0.05)


def test_cancel_stops_between_tokens(smollm: LlamaCppBackend) -> None:
    cancel = threading.Event()
    gen = smollm.stream_chat(
        [ChatMessage("user", "Write a long story about a dragon.")],
        GenerationParams(max_tokens=200),
        cancel,
    )
    next(gen)
    cancel.set()
    _, done = drain(gen)
    assert done.finish_reason == "cancelled"
    assert done.usage.output_tokens < 5


def test_seeded_sampling_is_reproducible(smollm: LlamaCppBackend) -> None:
    def run(seed: int) -> str:
        p = GenerationParams(max_tokens=12, temperature=0.9, seed=seed)
        return drain(smollm.stream_complete("My favourite animal is", p, threading.Event()))[1].text

    assert run(7) == run(7)


def test_prompt_longer_than_context_is_refused(smollm: LlamaCppBackend) -> None:
    with pytest.raises(PromptTooLongError):
        drain(
            smollm.stream_complete("word " * 600, GenerationParams(max_tokens=2), threading.Event())
        )


def test_missing_model_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        LlamaCppBackend(tmp_path / "missing.gguf", name="x")


def test_not_a_gguf_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"PK\x03\x04 definitely not a model")
    with pytest.raises(ModelError, match="not a GGUF"):
        LlamaCppBackend(bad, name="x")


def test_truncated_gguf_file(tmp_path: Path, smollm_path: Path) -> None:
    bad = tmp_path / "truncated.gguf"
    bad.write_bytes(smollm_path.read_bytes()[: 1 << 20])
    with pytest.raises(ModelError, match="cannot load"):
        LlamaCppBackend(bad, name="x")


def test_prompt_prefix_reuse_gives_the_same_answer(smollm: LlamaCppBackend) -> None:
    # The second request reuses the KV cache of the shared system prompt; the answer must
    # not depend on what ran before.
    def chat(question: str) -> str:
        messages = [ChatMessage("system", DEFAULT_SYSTEM_PROMPT), ChatMessage("user", question)]
        gen = smollm.stream_chat(messages, GenerationParams(max_tokens=16), threading.Event())
        return drain(gen)[1].text

    first = chat("Name three fruits.")
    chat("What is the tallest mountain?")
    smollm.score("unrelated prompt", [" text"])
    assert chat("Name three fruits.") == first
