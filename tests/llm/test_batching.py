"""Continuous batching on the real llama.cpp model: what a request gets inside a batch of
others is what it gets alone (up to near-ties, see test 1), every per-request option
holds inside the batch, and a sequence that ends or is cancelled frees its slot for the
next request at once."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from consortium.errors import PromptTooLongError
from consortium.llm.base import ChatMessage, Completion, GenerationParams, ResponseFormat
from consortium.llm.llama_cpp_backend import LlamaCppBackend
from consortium.llm.option_batch import OPTION_SEQUENCES
from consortium.llm.worker import GenerationRequest, ModelWorker

SLOTS = 8
CONTEXT = 512
# Log-probabilities closer than this are a near-tie (test 1).
NEAR_TIE = 0.5


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def worker(smollm_path: Path) -> AsyncIterator[ModelWorker]:
    w = ModelWorker(
        lambda: LlamaCppBackend(
            smollm_path, name="smollm2-135m", context_size=CONTEXT, threads=2, parallel=SLOTS
        )
    )
    await w.start()
    yield w
    await w.stop()


def chat(question: str, **params: object) -> GenerationRequest:
    return GenerationRequest(
        GenerationParams(**params),  # type: ignore[arg-type]
        messages=(ChatMessage("user", question),),
    )


async def run(w: ModelWorker, request: GenerationRequest) -> Completion:
    return await w.generate(request).collect()


QUESTIONS = [
    "Name a colour of the sky.",
    "What is two plus two?",
    "Write one sentence about rivers.",
    "Name a fruit that is yellow.",
    "What do bees make?",
    "Say hello in French.",
]


def first_difference(a: list[str], b: list[str]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


@pytest.mark.asyncio(loop_scope="module")
async def test_temperature_zero_inside_a_batch_matches_alone(worker: ModelWorker) -> None:
    # A sequence's row is computed by llama.cpp's kernels chosen for the batch's shape
    # (its rows, the cache span its attention covers), which may sum in another order
    # than alone: the logits differ in the last bits, and greedy decoding may take the
    # runner-up of a near-tie (llama.cpp's own server behaves the same). Anything else (a wrong
    # position, a cache shared by mistake) would part the texts at a clear winner, or
    # for a token the model ranked low: every difference must start where the batch
    # took a token the alone run ranked within NEAR_TIE of its winner.
    params = {"max_tokens": 16, "logprobs": True, "top_logprobs": 5}
    alone = [await run(worker, chat(q, **params)) for q in QUESTIONS]
    mixed = [chat(q, **params) for q in QUESTIONS] + [
        # two more with other options, so the batch is mixed
        chat("Tell a story.", max_tokens=40, temperature=0.9, seed=3),
        chat("List numbers:", max_tokens=30, stop=("5",)),
    ]
    lanes = [f"user{i}" for i in range(len(mixed))]
    together = await asyncio.gather(
        *(worker.generate(r, lane=lane).collect() for r, lane in zip(mixed, lanes, strict=True))
    )
    assert worker.load().steps > 0
    for a, b in zip(alone, together, strict=False):
        ta = [lp.token for lp in a.logprobs]
        tb = [lp.token for lp in b.logprobs]
        i = first_difference(ta, tb)
        if i is None:
            assert [lp.logprob for lp in b.logprobs] == pytest.approx(
                [lp.logprob for lp in a.logprobs], abs=NEAR_TIE
            )
            continue
        ranked = dict(a.logprobs[i].top)
        assert tb[i] in ranked, (i, ta, tb, ranked)
        assert a.logprobs[i].logprob - ranked[tb[i]] < NEAR_TIE, (i, ta, tb, ranked)


@pytest.mark.asyncio(loop_scope="module")
async def test_same_seed_same_text(worker: ModelWorker) -> None:
    # Alone, a seed fixes the text (and another seed draws another). Inside a batch
    # the same draws meet logits that differ in the last bits (test 1), so a sampled
    # text may part from its alone twin wherever a draw falls near a boundary between
    # two tokens (README, "Concurrent serving").
    req = chat("Invent a name for a cat.", max_tokens=12, temperature=0.8, seed=11)
    first = (await run(worker, req)).text
    assert (await run(worker, req)).text == first
    reseeded = chat("Invent a name for a cat.", max_tokens=12, temperature=0.8, seed=12)
    assert len({first, (await run(worker, reseeded)).text}) == 2


@pytest.mark.asyncio(loop_scope="module")
async def test_per_request_options_hold_inside_a_batch(worker: ModelWorker) -> None:
    reqs = [
        chat("Count from 1 to 20, separated by commas.", max_tokens=60, stop=("7",)),
        chat("Write a long story about a dragon.", max_tokens=5),
        chat("What is the capital of Italy?", max_tokens=8, logprobs=True, top_logprobs=3),
        chat("Write a poem.", max_tokens=20, temperature=1.0, top_p=0.5, seed=1),
    ]
    stopped, short, probs, sampled = await asyncio.gather(*(run(worker, r) for r in reqs))
    assert "7" not in stopped.text and stopped.finish_reason == "stop"
    assert short.usage.output_tokens == 5 and short.finish_reason == "length"
    assert len(probs.logprobs) == probs.usage.output_tokens
    assert all(len(lp.top) == 3 and lp.logprob <= 0 for lp in probs.logprobs)
    assert sampled.usage.output_tokens <= 20


@pytest.mark.asyncio(loop_scope="module")
async def test_two_json_schemas_in_one_batch_both_parse(worker: ModelWorker) -> None:
    person = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    colours = {
        "type": "object",
        "properties": {
            "colours": {"type": "array", "items": {"enum": ["red", "blue"]}, "maxItems": 3}
        },
        "required": ["colours"],
    }

    def constrained(question: str, schema: dict[str, object]) -> GenerationRequest:
        fmt = ResponseFormat("json_schema", json.dumps(schema))
        return chat(question, max_tokens=60, response_format=fmt)

    a, b, plain = await asyncio.gather(
        run(worker, constrained("Describe a person.", person)),
        run(worker, constrained("Name some colours.", colours)),
        run(worker, chat("Say hi.", max_tokens=10)),
    )
    pa, pb = json.loads(a.text), json.loads(b.text)
    assert isinstance(pa["name"], str) and isinstance(pa["age"], int)
    assert all(c in ("red", "blue") for c in pb["colours"])
    assert plain.text


@pytest.mark.asyncio(loop_scope="module")
async def test_a_cancelled_sequence_frees_its_slot_and_the_others_finish(
    worker: ModelWorker,
) -> None:
    long = [
        chat(f"Write a very long story about a ship named {i}.", max_tokens=32)
        for i in range(SLOTS)
    ]
    # One caller may hold all slots but one (the queue's slot policy): eight callers.
    streams = [worker.generate(r, lane=f"user{i}") for i, r in enumerate(long)]
    iters = [s.__aiter__() for s in streams]
    await asyncio.gather(*(it.__anext__() for it in iters))  # all eight are running
    assert worker.load().slots_busy == SLOTS
    await streams[0].aclose()  # the consumer goes away: its slot frees at the next token
    late = worker.generate(chat("Say yes.", max_tokens=3), lane="user0")
    done = await late.collect()
    # The late request ran while the others were still generating: a slot was freed.
    others_running = worker.load().slots_busy
    assert done.usage.output_tokens >= 1 and others_running >= 1
    rest = [await s.collect() for s in streams[1:]]
    assert all(c.finish_reason in ("length", "stop") for c in rest)
    assert worker.load().slots_busy == 0


@pytest.mark.asyncio(loop_scope="module")
async def test_a_slow_reader_does_not_stall_the_batch(worker: ModelWorker) -> None:
    slow = worker.generate(chat("Write a story about a fox.", max_tokens=24))
    it = slow.__aiter__()
    await it.__anext__()  # started, then not read
    fast = await run(worker, chat("Write a story about a hen.", max_tokens=24))
    assert fast.usage.output_tokens > 0
    finished = await slow.collect()
    assert finished.usage.output_tokens > 0


@pytest.mark.asyncio(loop_scope="module")
async def test_a_bad_request_fails_alone(worker: ModelWorker) -> None:
    results = await asyncio.gather(
        run(worker, chat("word " * (CONTEXT + 10), max_tokens=4)),
        run(worker, chat("Say hi.", max_tokens=6)),
        return_exceptions=True,
    )
    assert isinstance(results[0], PromptTooLongError)
    assert isinstance(results[1], Completion) and results[1].text


@pytest.mark.asyncio(loop_scope="module")
async def test_a_shared_system_prompt_is_computed_once(worker: ModelWorker) -> None:
    system = "You are a careful assistant who answers in one short sentence. " * 4

    def ask(q: str) -> GenerationRequest:
        return GenerationRequest(
            GenerationParams(max_tokens=8),
            messages=(ChatMessage("system", system), ChatMessage("user", q)),
        )

    cold = await run(worker, ask("What is ice?"))
    before = worker.load()
    warm = await run(worker, ask("What is fire?"))
    after = worker.load()
    assert after.prefix_tokens_reused - before.prefix_tokens_reused >= 40
    assert after.prefix_hits == before.prefix_hits + 1
    assert (await run(worker, ask("What is ice?"))).text == cold.text
    assert warm.text


@pytest.mark.asyncio(loop_scope="module")
async def test_options_scored_over_a_shared_stem_match_options_scored_alone(
    worker: ModelWorker,
) -> None:
    prompt = "Question: What is the capital of France?\nAnswer:"
    options = [" Paris", " Berlin", " a banana that grows on a tree", " Rome"]
    together = await worker.score(prompt, options)
    alone = [(await worker.score(prompt, [o]))[0] for o in options]
    assert together == pytest.approx(alone, abs=0.05)
    assert together[0] == max(together)


@pytest.mark.asyncio(loop_scope="module")
async def test_more_options_than_one_decode_holds_are_scored_in_groups(
    worker: ModelWorker,
) -> None:
    # More options than sequences in one decode, and options too long for all of them
    # to share the cells of one: both split into groups. Long options read in a decode
    # of hundreds of rows go through other matrix kernels than one read alone (rows
    # summed in another order): ~0.02 nats a token apart, so compared relatively; an
    # option attending to another's tokens would be nats a token apart.
    prompt = "Question: Which of these is a colour?\nAnswer:"
    short = [f" option {i}" for i in range(OPTION_SEQUENCES + 3)] + [" blue"]
    together = await worker.score(prompt, short)
    alone = [(await worker.score(prompt, [o]))[0] for o in short]
    assert together == pytest.approx(alone, abs=0.05)
    long = [" a long answer that goes on and on about nothing" * 10 + f" {i}" for i in range(6)]
    tokens = await worker.count_tokens(prompt + long[0])
    assert 6 * tokens > CONTEXT  # more than one group's cells
    together = await worker.score(prompt, long)
    alone = [(await worker.score(prompt, [o]))[0] for o in long]
    assert together == pytest.approx(alone, rel=0.03)


@pytest.mark.asyncio(loop_scope="module")
async def test_a_stem_shared_with_the_last_question_is_not_read_again(
    worker: ModelWorker,
) -> None:
    shots = "Question: What is ice?\nAnswer: frozen water\n\n" * 6
    await worker.score(shots + "Question: What is fire?\nAnswer:", [" hot", " cold"])
    before = worker.load()
    await worker.score(shots + "Question: What is snow?\nAnswer:", [" cold", " hot"])
    after = worker.load()
    assert after.prefix_hits == before.prefix_hits + 1
    assert after.prefix_tokens_reused - before.prefix_tokens_reused >= 60


def test_the_options_of_a_question_are_evaluated_in_one_decode(
    smollm_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = LlamaCppBackend(smollm_path, name="s", context_size=CONTEXT, threads=2, parallel=1)
    try:
        prompt = "Question: What is the capital of France?\nAnswer:"
        options = [" Paris", " Berlin", " Rome", " Madrid"]
        first = backend.score(prompt, options)  # makes the scoring context, reads the stem
        context = backend._options[0] if backend._options else None
        assert context is not None
        real = context.decode
        calls: list[set[int]] = []

        def decode(tokens: Any, positions: Any, seq_ids: Any, logits: Any) -> Any:
            calls.append(set(seq_ids))
            return real(tokens, positions, seq_ids, logits)

        monkeypatch.setattr(context, "decode", decode)
        again = backend.score(prompt, options)
        assert calls == [{1, 2, 3, 4}]  # the stem was cached; one decode, four sequences
        assert again == pytest.approx(first, abs=1e-4)
    finally:
        backend.close()


def test_direct_calls_run_one_generation_through_the_batch(smollm_path: Path) -> None:
    backend = LlamaCppBackend(smollm_path, name="s", context_size=CONTEXT, threads=2, parallel=2)
    try:
        gen = backend.stream_chat(
            [ChatMessage("user", "Say hi.")], GenerationParams(max_tokens=4), threading.Event()
        )
        next(gen)
        gen.close()  # the caller stops listening: the slot is free again
        assert backend.batch.active == 0
    finally:
        backend.close()
