"""JSON-constrained generation (response_format) on llama.cpp's grammar sampler, on the
bundled SmolLM2; and the refusal of the backends that have no grammar."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from consortium.errors import InvalidResponseFormat, RequestRejected, UnsupportedByModel
from consortium.llm.base import (
    ChatMessage,
    Chunk,
    Completion,
    GenerationParams,
    ResponseFormat,
)
from consortium.llm.echo import EchoBackend
from consortium.llm.grammar import grammar_for
from consortium.llm.llama_cpp_backend import LlamaCppBackend
from tests.helpers import drain

SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 24},
        "size": {"type": "integer", "enum": [1, 2, 3]},
    },
    "required": ["city", "size"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def smollm(smollm_path: Path) -> Iterator[LlamaCppBackend]:
    backend = LlamaCppBackend(smollm_path, name="smollm2-135m", context_size=1024, threads=2)
    yield backend
    backend.close()


def chat(backend: LlamaCppBackend, question: str, **params: Any) -> tuple[list[Chunk], Completion]:
    gen = backend.stream_chat(
        [ChatMessage("user", question)], GenerationParams(**params), threading.Event()
    )
    return drain(gen)


def valid_for_schema(value: object) -> bool:
    """SCHEMA checked by hand (jsonschema is not a dependency)."""
    return (
        isinstance(value, dict)
        and set(value) == {"city", "size"}
        and isinstance(value["city"], str)
        and len(value["city"]) <= 24
        and type(value["size"]) is int
        and value["size"] in (1, 2, 3)
    )


def test_llama_cpp_declares_the_grammar_capability(smollm: LlamaCppBackend) -> None:
    assert smollm.info.capabilities == {"grammar", "token_logprobs", "option_scoring"}
    assert "grammar" not in EchoBackend().info.capabilities


def test_json_object_output_is_a_json_object(smollm: LlamaCppBackend) -> None:
    chunks, done = chat(
        smollm,
        "A JSON object with a cat's name and age:",
        max_tokens=128,
        response_format=ResponseFormat("json_object"),
        logprobs=True,
    )
    assert done.text == "".join(c.text for c in chunks)
    assert isinstance(json.loads(done.text), dict)
    # The grammar's completion ends the generation, not the token budget.
    assert done.finish_reason == "stop"
    assert done.text.rstrip() == done.text
    assert len(done.logprobs) == done.usage.output_tokens


def test_json_schema_output_validates(smollm: LlamaCppBackend) -> None:
    _, done = chat(
        smollm,
        "Give a city and its size (1 small, 2 medium, 3 large) as JSON.",
        max_tokens=96,
        response_format=ResponseFormat("json_schema", json.dumps(SCHEMA)),
    )
    assert done.finish_reason == "stop"
    assert valid_for_schema(json.loads(done.text)), done.text


@pytest.mark.parametrize("top_p", [1.0, 0.9])
def test_sampled_json_schema_output_validates(smollm: LlamaCppBackend, top_p: float) -> None:
    # top_p 1 draws first and masks only when the draw is rejected; top_p < 1 always masks.
    # The schema bounds the output (maxLength), so the grammar, not the budget, ends it.
    for seed in (1, 2):
        _, done = chat(
            smollm,
            "Name a city and its size as JSON.",
            max_tokens=96,
            temperature=1.0,
            top_p=top_p,
            seed=seed,
            response_format=ResponseFormat("json_schema", json.dumps(SCHEMA)),
        )
        assert done.finish_reason == "stop", done.text
        assert valid_for_schema(json.loads(done.text)), done.text


def test_constrained_logprobs_are_the_models(smollm: LlamaCppBackend) -> None:
    # The reported log-probabilities are the model's before the constraint: they match
    # the scorer's log-likelihood of the same text.
    prompt = "A JSON object about the moon:"
    gen = smollm.stream_complete(
        prompt,
        GenerationParams(
            max_tokens=12, logprobs=True, response_format=ResponseFormat("json_object")
        ),
        threading.Event(),
    )
    _, done = drain(gen)
    assert done.text.startswith("{")
    scored = smollm.score(prompt, [done.text])[0]
    # Up to ~0.1 a token apart: flash attention sums in another order for a prompt read
    # at once than for tokens generated one by one. A masked distribution would be
    # nats apart (the grammar forces most of these tokens).
    tolerance = 0.1 * len(done.logprobs)
    assert scored == pytest.approx(sum(lp.logprob for lp in done.logprobs), abs=tolerance)


@pytest.mark.parametrize(
    ("schema", "check"),
    [
        ('{"type": "string", "maxLength": 30}', lambda v: isinstance(v, str) and len(v) <= 30),
        ('{"type": "integer"}', lambda v: type(v) is int),
        ('{"type": "array", "items": {"type": "integer"}, "maxItems": 4}', lambda v: len(v) <= 4),
        ("true", lambda v: True),  # any value
    ],
)
def test_json_schema_of_any_root_type_ends_valid(
    smollm: LlamaCppBackend, schema: str, check: Callable[[object], bool]
) -> None:
    # The string case: SmolLM2 writes a newline inside this string, which JSON forbids
    # raw; the grammar must not let it.
    _, done = chat(
        smollm,
        "Answer in JSON: how many legs does a cat have?",
        max_tokens=48,
        response_format=ResponseFormat("json_schema", schema),
    )
    assert done.finish_reason == "stop", done.text
    assert check(json.loads(done.text)), done.text


def test_cancelled_constrained_generation_leaves_the_model_usable(
    smollm: LlamaCppBackend,
) -> None:
    cancel = threading.Event()
    fmt = ResponseFormat("json_schema", json.dumps(SCHEMA))
    params = GenerationParams(max_tokens=64, response_format=fmt)
    ask = [ChatMessage("user", "A city and its size as JSON.")]
    gen = smollm.stream_chat(ask, params, cancel)
    next(gen)
    cancel.set()
    _, done = drain(gen)
    assert done.finish_reason == "cancelled"
    # An abandoned generation (never started) frees its grammar too.
    smollm.stream_chat(ask, params, threading.Event())
    _, again = drain(smollm.stream_chat(ask, params, threading.Event()))
    assert again.finish_reason == "stop" and valid_for_schema(json.loads(again.text))


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ("{not json", "is not valid JSON"),
        ("[1, 2]", "must be a JSON Schema object"),
        ("false", "is false: no value matches it"),
        ('{"type": "frobnicate"}', "cannot be turned into a grammar"),
        ('{"$ref": "https://example.com/schema.json"}', "cannot be turned into a grammar"),
    ],
)
def test_invalid_schema_is_rejected_before_generating(
    smollm: LlamaCppBackend, schema: str, message: str
) -> None:
    params = GenerationParams(response_format=ResponseFormat("json_schema", schema))
    with pytest.raises(InvalidResponseFormat, match=f"response_format.json_schema {message}"):
        smollm.stream_chat([ChatMessage("user", "hi")], params, threading.Event())
    assert issubclass(InvalidResponseFormat, RequestRejected)


def test_unconstrained_generation_is_llama_cpps_greedy(
    smollm: LlamaCppBackend, smollm_path: Path
) -> None:
    # Without response_format the loop (and the batch it runs in) picks the same tokens
    # at temperature 0 as llama-cpp-python's own Llama with llama.cpp's greedy sampler.
    from llama_cpp import Llama

    prompt = "The three primary colours are"
    _, done = drain(
        smollm.stream_complete(prompt, GenerationParams(max_tokens=24), threading.Event())
    )
    tokens = smollm._tokenize(prompt)
    llm = Llama(str(smollm_path), n_ctx=512, n_threads=2, flash_attn=True, verbose=False)
    try:
        theirs = llm.create_completion(
            tokens, max_tokens=24, temperature=0.0, repeat_penalty=1.0, top_k=1
        )
    finally:
        llm.close()
    assert done.text == theirs["choices"][0]["text"]  # type: ignore[index]


@pytest.mark.parametrize("mode", ["chat", "complete"])
def test_echo_backend_refuses_response_format(mode: str) -> None:
    echo = EchoBackend()
    params = GenerationParams(response_format=ResponseFormat("json_object"))
    with pytest.raises(UnsupportedByModel, match=r"cannot constrain output to JSON"):
        if mode == "chat":
            echo.stream_chat([ChatMessage("user", "hi")], params, threading.Event())
        else:
            echo.stream_complete("hi", params, threading.Event())


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "array", "items": {"type": "integer"}, "maxItems": 1_000_000_000},
        {"type": "string", "minLength": 10**30},
        {"type": "string", "pattern": "^a{99999999999999999999}$"},
        {
            "type": "object",
            "properties": {f"p{i}": {"type": "string", "maxLength": 1000} for i in range(5)},
        },
    ],
)
def test_schema_asking_for_huge_repetitions_is_refused_before_converting(
    schema: dict[str, Any],
) -> None:
    # The converter writes every repetition out: these would take gigabytes (or hours).
    with pytest.raises(InvalidResponseFormat, match="too many repetitions"):
        grammar_for(ResponseFormat("json_schema", json.dumps(schema)))


def test_a_reference_outside_the_schema_is_refused_before_converting() -> None:
    schema = {"type": "object", "properties": {"a": {"$ref": "http://10.0.0.1/x.json"}}}
    with pytest.raises(InvalidResponseFormat, match="only references within the schema"):
        grammar_for(ResponseFormat("json_schema", json.dumps(schema)))


def test_schema_with_modest_bounds_converts() -> None:
    schema = {
        "type": "object",
        "properties": {
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 64}, "maxItems": 8},
            "code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"},
        },
    }
    assert "root" in grammar_for(ResponseFormat("json_schema", json.dumps(schema)))


def _defs(uses: int, target: dict[str, Any]) -> dict[str, Any]:
    """An object whose `uses` properties all refer to one definition."""
    return {
        "$defs": {"t": target},
        "type": "object",
        "properties": {f"p{i}": {"$ref": "#/$defs/t"} for i in range(uses)},
        "required": [f"p{i}" for i in range(uses)],
    }


def _doubling(levels: int) -> dict[str, Any]:
    """Definitions each referring to the one before twice: 2**levels uses of the first."""
    defs: dict[str, Any] = {"d0": {"type": "integer"}}
    for i in range(1, levels + 1):
        ref = {"$ref": f"#/$defs/d{i - 1}"}
        defs[f"d{i}"] = {"type": "array", "prefixItems": [ref, ref]}
    return {"$defs": defs, "type": "object", "properties": {"a": {"$ref": f"#/$defs/d{levels}"}}}


@pytest.mark.parametrize(
    ("schema", "what"),
    [
        # 50,000 strings (489 KB) held the model for 46.5 s.
        ({"type": "string", "enum": [f"value-{i:06d}" for i in range(50_000)]}, "enum values"),
        (
            {
                "anyOf": [
                    {"type": "object", "properties": {f"k{i}": {"type": "integer"}}}
                    for i in range(2_000)
                ]
            },
            "alternatives",
        ),
        (
            {"type": "object", "properties": {f"k{i}": {"type": "integer"} for i in range(300)}},
            "alternatives",
        ),
        # A reference counts its target each time it is used.
        (_defs(5, {"type": "string", "maxLength": 1000}), "repetitions"),
        (_defs(40, {"type": "string", "enum": [f"v{i}" for i in range(20)]}), "enum values"),
        (_defs(3, {"anyOf": [{"type": "integer"}] * 100}), "alternatives"),
        (_doubling(12), "subschemas"),
        # A property named like a keyword is still a schema.
        (
            {"type": "object", "properties": {"enum": {"type": "string", "maxLength": 10**6}}},
            "repetitions",
        ),
        (
            {"type": "object", "properties": {"$defs": {"type": "string", "minLength": 10**6}}},
            "repetitions",
        ),
    ],
    ids=[
        "enum",
        "anyOf",
        "optional-properties",
        "ref-repetitions",
        "ref-enum",
        "ref-anyOf",
        "ref-rules",
        "property-named-enum",
        "property-named-defs",
    ],
)
def test_schema_opening_too_many_alternatives_is_refused_before_converting(
    schema: dict[str, Any], what: str
) -> None:
    with pytest.raises(
        InvalidResponseFormat, match=f"response_format.json_schema asks for too many {what}"
    ):
        grammar_for(ResponseFormat("json_schema", json.dumps(schema)))


TREE = {
    "$defs": {
        "node": {
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 32},
                "children": {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 4},
            },
            "required": ["name"],
        }
    },
    "type": "object",
    "properties": {"tree": {"$ref": "#/$defs/node"}},
}


@pytest.mark.parametrize(
    "schema",
    [
        SCHEMA,
        TREE,  # recursive: counted once, not looped over
        # Where it is written and 3 uses: 4 x 1000 repetitions, within 4096.
        _defs(3, {"type": "string", "maxLength": 1000}),
        _doubling(6),  # 64 uses of d0
        {"type": "string", "enum": [f"colour-{i}" for i in range(200)]},
        {"anyOf": [{"type": "integer"}, {"type": "string", "maxLength": 16}, {"type": "null"}]},
        {"type": "object", "properties": {f"k{i}": {"type": "integer"} for i in range(40)}},
    ],
    ids=["object", "recursive", "ref-repetitions", "ref-doubling", "enum", "anyOf", "properties"],
)
def test_ordinary_schemas_still_convert(schema: dict[str, Any]) -> None:
    assert "root" in grammar_for(ResponseFormat("json_schema", json.dumps(schema)))
