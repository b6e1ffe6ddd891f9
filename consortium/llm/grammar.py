"""JSON-constrained generation on llama.cpp: a GBNF grammar for a `ResponseFormat`, and
llama.cpp's own grammar sampler applied to the decode loop's logits token by token.

`json_object` uses llama-cpp-python's JSON grammar (any JSON object); `json_schema`
turns the schema into GBNF with llama-cpp-python's json-schema-to-grammar converter.
A schema that is not JSON, or that the converter or llama.cpp's grammar parser cannot
handle, is the caller's error: `InvalidResponseFormat` (a RequestRejected) before any
token is generated. So is a schema whose grammar would be too large: the converter
writes out every repetition a bound asks for (`maxItems`, `minItems`, `maxLength`,
`minLength`, a pattern's `{m,n}`), so `{"maxItems": 1000000000}` alone would take
gigabytes; their sum over the schema may be at most MAX_REPETITIONS. llama.cpp's grammar
sampler checks every alternative still open (each enum value, each anyOf/oneOf branch,
each optional property) against the whole vocabulary at every token, so their numbers are
bounded too (MAX_ENUM_VALUES, MAX_BRANCHES), as are the subschemas in all (MAX_RULES).
`check_schema` counts them before converting, over everything the schema holds and once
more per `$ref` for its target (a reference back into a target being counted adds one
rule: recursion is the converter's one rule, not a loop), and refuses a `$ref` to
anything outside the schema; the grammar may be at most MAX_GRAMMAR_CHARS.

The sampler (`llama_sampler_init_grammar`) keeps the grammar's parse state; the loop
asks it whether a token is allowed (`allows`), masks the rejected tokens of a whole
logits vector to -inf (`mask`) and advances it by the chosen token (`accept`).
"""

from __future__ import annotations

import ctypes
import json
import math
import re
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

from consortium.errors import InvalidResponseFormat
from consortium.llm.base import ResponseFormat
from consortium.llm.sampling import Logits

GRAMMAR_ROOT = "root"
_ANY_STRING_CHAR = r'[^"\\]'
_JSON_STRING_CHAR = r'[^"\\\x7F\x00-\x1F]'
# The repetitions a schema's bounds may ask for in all (e.g. one maxLength of 4096), and
# the largest grammar the converter may produce.
MAX_REPETITIONS = 4096
MAX_GRAMMAR_CHARS = 1 << 20
# Alternatives open at once cost every token a scan of the vocabulary each (SmolLM2 on
# 2 busy cores: ~12x the time of a plain schema's token with an enum of 512 values).
MAX_ENUM_VALUES = 512
MAX_BRANCHES = 256
MAX_RULES = 1024
_REPEAT_KEYWORDS = ("minItems", "maxItems", "minLength", "maxLength")
_PATTERN_BOUND = re.compile(r"\{\s*(\d+)\s*(?:,\s*(\d*)\s*)?\}")


def grammar_for(response_format: ResponseFormat) -> str:
    """The GBNF grammar of `response_format`; InvalidResponseFormat for a bad schema."""
    from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

    if response_format.kind == "json_object":
        return str(JSON_GBNF)
    try:
        schema = json.loads(response_format.schema)
    except (ValueError, RecursionError) as e:
        raise InvalidResponseFormat(
            f"response_format.json_schema is not valid JSON: {e or 'nested too deeply'}"
        ) from e
    if schema is False:
        raise InvalidResponseFormat("response_format.json_schema is false: no value matches it")
    if schema is True:
        schema = {}  # any JSON value
    if not isinstance(schema, dict):
        raise InvalidResponseFormat(
            "response_format.json_schema must be a JSON Schema object, "
            f"not a JSON {type(schema).__name__}"
        )
    check_schema(schema)
    try:
        # The converter reports what it cannot handle with ValueError, and with asserts
        # (unknown types), KeyError/TypeError/AttributeError on malformed keywords.
        grammar = str(json_schema_to_gbnf(json.dumps(schema)))
    except (ValueError, AssertionError, KeyError, TypeError, AttributeError, RecursionError) as e:
        raise InvalidResponseFormat(
            f"response_format.json_schema cannot be turned into a grammar: {e or type(e).__name__}"
        ) from e
    if len(grammar) > MAX_GRAMMAR_CHARS:
        raise InvalidResponseFormat(
            f"response_format.json_schema makes a grammar of {len(grammar)} characters, "
            f"over the limit of {MAX_GRAMMAR_CHARS}"
        )
    # The converter's string characters exclude only `"` and `\`; JSON also forbids raw
    # control characters in a string (a newline the model writes there would make the
    # output unparseable), as llama-cpp-python's own JSON grammar does.
    return grammar.replace(_ANY_STRING_CHAR, _JSON_STRING_CHAR)


def check_schema(schema: dict[str, Any]) -> None:
    """InvalidResponseFormat if `schema` asks for more than MAX_REPETITIONS repetitions
    (its minItems, maxItems, minLength, maxLength and pattern bounds), MAX_ENUM_VALUES enum
    values, MAX_BRANCHES alternatives or MAX_RULES subschemas in all, each `$ref` counting
    its target again (counted without converting: the converter would build them all); or
    if it has a `$ref` outside itself (the converter refuses to fetch one only by an
    `assert`, which `python -O` drops)."""
    try:
        cost = _Counter(schema).of(schema)
    except RecursionError:
        raise InvalidResponseFormat("response_format.json_schema is nested too deeply") from None
    for name, limit, what in (
        (
            "repetitions",
            MAX_REPETITIONS,
            "repetitions (its minItems, maxItems, minLength, "
            "maxLength and pattern bounds add up to",
        ),
        ("enum_values", MAX_ENUM_VALUES, "enum values (in all"),
        (
            "branches",
            MAX_BRANCHES,
            "alternatives (anyOf and oneOf branches, types of a type "
            "list and optional properties, in all",
        ),
        ("rules", MAX_RULES, "subschemas (in all"),
    ):
        if getattr(cost, name) > limit:
            raise InvalidResponseFormat(
                f"response_format.json_schema asks for too many {what}, each $ref counting "
                f"its target again: over {limit})"
            )


@dataclass
class _Cost:
    """What a (sub)schema makes the converter and the sampler do, each count saturating
    just over its limit."""

    repetitions: int = 0
    enum_values: int = 0
    branches: int = 0
    rules: int = 0

    def add(self, other: _Cost) -> None:
        self.repetitions = min(self.repetitions + other.repetitions, MAX_REPETITIONS + 1)
        self.enum_values = min(self.enum_values + other.enum_values, MAX_ENUM_VALUES + 1)
        self.branches = min(self.branches + other.branches, MAX_BRANCHES + 1)
        self.rules = min(self.rules + other.rules, MAX_RULES + 1)


class _Counter:
    """Counts a schema's cost as the converter expands it: every `$ref` adds its target's
    cost (computed once per target), a reference into a target still being counted adds
    one rule (the converter refers to its rule)."""

    def __init__(self, root: dict[str, Any]) -> None:
        self._root = root
        self._done: dict[int, _Cost] = {}
        self._open: set[int] = set()

    def of(self, node: Any) -> _Cost:
        cost = _Cost()
        if isinstance(node, list):
            for item in node:
                cost.add(self.of(item))
            return cost
        if not isinstance(node, dict):
            return cost
        cost.rules = 1
        for key in _REPEAT_KEYWORDS:
            value = node.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                cost.add(_Cost(repetitions=_bound(value)))
        pattern = node.get("pattern")
        if isinstance(pattern, str):
            for low, high in _PATTERN_BOUND.findall(pattern):
                digits = high or low
                bound = _bound(int(digits) if len(digits) < 10 else MAX_REPETITIONS + 1)
                cost.add(_Cost(repetitions=bound))
        enum = node.get("enum")
        if isinstance(enum, list):
            cost.add(_Cost(enum_values=len(enum)))
        cost.add(_Cost(branches=_branches(node)))
        ref = node.get("$ref")
        if isinstance(ref, str):
            cost.add(self._referenced(ref))
        # Everything, where it is written too: a key cannot tell a schema from a property
        # named "enum" or "$defs".
        for value in node.values():
            cost.add(self.of(value))
        return cost

    def _referenced(self, ref: str) -> _Cost:
        if not ref.startswith("#"):
            raise InvalidResponseFormat(
                "response_format.json_schema cannot be turned into a grammar: "
                f"only references within the schema (#/...) are supported, not {ref[:100]!r}"
            )
        target: Any = self._root
        for name in ref[1:].split("/")[1:]:  # as the converter resolves it
            if not isinstance(target, dict) or name not in target:
                return _Cost()  # the converter names what it cannot resolve
            target = target[name]
        key = id(target)
        if key in self._open:
            return _Cost(rules=1)
        if key not in self._done:
            self._open.add(key)
            try:
                self._done[key] = self.of(target)
            finally:
                self._open.discard(key)
        return self._done[key]


def _branches(node: dict[str, Any]) -> int:
    """The alternatives a schema object opens: its anyOf/oneOf branches, the types of a
    type list, its optional properties."""
    n = 0
    for key in ("anyOf", "oneOf"):
        if isinstance(node.get(key), list):
            n += len(node[key])
    if isinstance(node.get("type"), list):
        n += len(node["type"])
    properties = node.get("properties")
    if isinstance(properties, dict):
        required = node.get("required")
        wanted = (
            {r for r in required if isinstance(r, str)} if isinstance(required, list) else set()
        )
        n += sum(1 for name in properties if name not in wanted)
    return n


def _bound(value: float) -> int:
    """A repetition count as it adds to the total: 0 to MAX_REPETITIONS + 1."""
    if not math.isfinite(value) or value > MAX_REPETITIONS:
        return MAX_REPETITIONS + 1
    return max(0, int(value))


class GrammarConstraint:
    """llama.cpp's grammar sampler over one model's vocabulary, for one generation.

    Owns a native sampler: call `close()` when done (a finalizer frees it otherwise).
    """

    def __init__(self, vocab: Any, n_vocab: int, grammar: str, *, end_token: int) -> None:
        import llama_cpp

        self._lib: Any = llama_cpp
        sampler = llama_cpp.llama_sampler_init_grammar(
            vocab, grammar.encode(), GRAMMAR_ROOT.encode()
        )
        if not sampler:
            raise InvalidResponseFormat(
                "response_format: llama.cpp cannot parse the grammar made from it"
            )
        self._sampler = sampler
        self._free = weakref.finalize(self, llama_cpp.llama_sampler_free, sampler)
        self._end = end_token
        self._n = n_vocab
        # The whole vocabulary as llama_token_data (id, logit, p), filled from numpy.
        self._data = (llama_cpp.llama_token_data * n_vocab)()
        self._view = np.ctypeslib.as_array(self._data)
        self._ids = np.arange(n_vocab, dtype=np.int32)
        self._array = llama_cpp.llama_token_data_array()
        # One candidate, to test a single token without scanning the vocabulary.
        self._one = (llama_cpp.llama_token_data * 1)()
        self._one_view = np.ctypeslib.as_array(self._one)
        self._one_array = llama_cpp.llama_token_data_array()

    def close(self) -> None:
        self._free()

    def _apply(self, array: Any, data: Any, size: int) -> None:
        # A sampler may move `data`; set every field before each call.
        array.data = ctypes.cast(data, ctypes.POINTER(self._lib.llama_token_data))
        array.size = size
        array.selected = -1
        array.sorted = False
        self._lib.llama_sampler_apply(self._sampler, ctypes.byref(array))

    def allows(self, token: int) -> bool:
        """Whether the grammar accepts `token` next (an end-of-generation token: whether
        the JSON value is complete)."""
        if token < 0:
            return False
        one = self._one_view
        one["id"] = token
        one["logit"] = 0.0
        one["p"] = 0.0
        self._apply(self._one_array, self._one, 1)
        return bool(np.isfinite(one["logit"][0]))

    def can_end(self) -> bool:
        """Whether the text so far is a complete value of the grammar."""
        return self.allows(self._end)

    def mask(self, logits: Logits) -> Logits:
        """`logits` with every token the grammar rejects at -inf."""
        view = self._view
        view["id"] = self._ids
        view["logit"] = logits[: self._n]
        view["p"] = 0.0
        self._apply(self._array, self._data, self._n)
        masked: Logits = np.full(logits.shape, -np.inf, dtype=np.float32)
        masked[view["id"]] = view["logit"]
        return masked

    def accept(self, token: int) -> None:
        """Advances the grammar by `token`, which must be one it allows."""
        self._lib.llama_sampler_accept(self._sampler, token)
