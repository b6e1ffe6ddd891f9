"""The transformers backend's static batching (`parallel` > 1): requests the worker
hands it at once are generated in one padded batch, and each request's answer is what
the one-at-a-time path gives it — greedy and seeded sampling alike, with its own
max_tokens, stop strings and log-probabilities, streamed per request; a request cancelled
mid-batch ends while the others finish; a prompt beyond the context is refused without
disturbing the batch. The bundled SmolLM2-135M GGUF through transformers."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from consortium.errors import PromptTooLongError
from consortium.llm.base import ChatMessage, Completion, GenerationParams
from consortium.llm.transformers_backend import TransformersBackend
from consortium.llm.worker import GenerationRequest, ModelWorker
from tests.helpers import drain

MIXED = [
    GenerationRequest(
        GenerationParams(max_tokens=12),
        messages=(ChatMessage("user", "What is the capital of France?"),),
    ),
    GenerationRequest(
        GenerationParams(max_tokens=16, stop=(",",)),
        messages=(ChatMessage("user", "Name three colours."),),
    ),
    GenerationRequest(
        GenerationParams(max_tokens=10, logprobs=True, top_logprobs=2),
        messages=(ChatMessage("user", "Write a haiku about rain."),),
    ),
    GenerationRequest(
        GenerationParams(max_tokens=14, temperature=0.8, seed=7),
        messages=(ChatMessage("user", "Tell me a joke about cats."),),
    ),
    GenerationRequest(
        GenerationParams(max_tokens=6), messages=(ChatMessage("user", "Why is the sky blue?"),)
    ),
    GenerationRequest(GenerationParams(max_tokens=8), prompt="The capital of Italy is"),
    GenerationRequest(
        GenerationParams(max_tokens=12, temperature=0.7, top_p=0.9, seed=3),
        messages=(ChatMessage("user", "List two fruits."),),
    ),
    GenerationRequest(
        GenerationParams(max_tokens=4), messages=(ChatMessage("user", "Say hello in Spanish."),)
    ),
]


def _load(path: Path, parallel: int) -> TransformersBackend:
    return TransformersBackend(
        path.parent, name="smollm2-135m-hf", gguf_file=path.name, threads=2, parallel=parallel
    )


@pytest.fixture(scope="module")
def one(smollm_path: Path) -> Iterator[TransformersBackend]:
    backend = _load(smollm_path, 1)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def alone(one: TransformersBackend) -> list[Completion]:
    """Each mixed request through the one-at-a-time path."""
    results = []
    for r in MIXED:
        if r.prompt is not None:
            gen = one.stream_complete(r.prompt, r.params, threading.Event())
        else:
            gen = one.stream_chat(r.messages, r.params, threading.Event())
        results.append(drain(gen)[1])
    return results


def _same(a: Completion, b: Completion) -> None:
    assert (b.text, b.finish_reason, b.usage.output_tokens) == (
        a.text,
        a.finish_reason,
        a.usage.output_tokens,
    )
    assert [lp.token for lp in b.logprobs] == [lp.token for lp in a.logprobs]
    for x, y in zip(a.logprobs, b.logprobs, strict=True):
        assert y.logprob == pytest.approx(x.logprob, abs=1e-3)
        assert [t for t, _ in y.top] == [t for t, _ in x.top]


async def test_a_batch_of_mixed_requests_answers_as_one_at_a_time(
    smollm_path: Path, alone: list[Completion]
) -> None:
    backend = _load(smollm_path, 8)
    worker = ModelWorker(lambda: backend)
    await worker.start()
    try:
        assert worker.slots == 8 and backend.runner is not None
        streams = [worker.generate(r) for r in MIXED]

        async def read(i: int) -> tuple[str, Completion]:
            text = "".join([c.text async for c in streams[i]])
            assert streams[i].completion is not None
            return text, streams[i].completion

        results = await asyncio.gather(*(read(i) for i in range(len(MIXED))))
    finally:
        await worker.stop()
    for (streamed, batched), single in zip(results, alone, strict=True):
        assert streamed == batched.text  # streamed per request
        _same(single, batched)
    assert alone[1].finish_reason == "stop" and "," not in alone[1].text
    assert alone[0].text and "Paris" in alone[0].text
    # Batched: some forward pass advanced several requests at once.
    runner = backend.runner
    assert runner is not None and runner.step_rows > runner.steps


def test_a_request_cancelled_mid_batch_ends_and_the_others_finish(
    smollm_path: Path, alone: list[Completion]
) -> None:
    backend = _load(smollm_path, 4)
    cancel = threading.Event()
    results: dict[int, Completion] = {}
    first_chunk = threading.Event()

    def cancelled() -> None:
        r = MIXED[0]
        gen = backend.stream_chat(r.messages, GenerationParams(max_tokens=200), cancel)
        next(gen)
        first_chunk.set()
        cancel.set()
        results[0] = drain(gen)[1]

    def normal(i: int) -> None:
        r = MIXED[i]
        results[i] = drain(backend.stream_chat(r.messages, r.params, threading.Event()))[1]

    threads = [threading.Thread(target=cancelled)] + [
        threading.Thread(target=normal, args=(i,)) for i in (1, 2)
    ]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
    finally:
        backend.close()
    assert first_chunk.is_set()
    assert results[0].finish_reason == "cancelled" and results[0].usage.output_tokens < 200
    _same(alone[1], results[1])
    _same(alone[2], results[2])


def test_a_prompt_beyond_the_context_is_refused_and_the_batch_serves_on(
    smollm_path: Path, alone: list[Completion]
) -> None:
    backend = TransformersBackend(
        smollm_path.parent,
        name="smollm2-135m-hf",
        gguf_file=smollm_path.name,
        threads=2,
        parallel=2,
        context_size=128,
    )
    try:
        with pytest.raises(PromptTooLongError):
            drain(backend.stream_complete("word " * 300, GenerationParams(), threading.Event()))
        r = MIXED[4]
        _, done = drain(backend.stream_chat(r.messages, r.params, threading.Event()))
    finally:
        backend.close()
    _same(alone[4], done)


def test_parallel_must_be_at_least_one(smollm_path: Path) -> None:
    with pytest.raises(ValueError, match="parallel must be at least 1"):
        _load(smollm_path, 0)
