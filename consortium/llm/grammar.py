"""JSON-constrained generation on llama.cpp: a GBNF grammar for a `ResponseFormat`, and
llama.cpp's own grammar sampler applied to the decode loop's logits token by token.

`json_object` uses llama-cpp-python's JSON grammar (any JSON object); `json_schema`
turns the schema into GBNF with llama-cpp-python's json-schema-to-grammar converter.
A schema that is not JSON, or that the converter or llama.cpp's grammar parser cannot
handle, is the caller's error: `InvalidResponseFormat` (a RequestRejected) before any
token is generated. So is a schema whose grammar would be too large: the converter
writes out every repetition a bound asks for (`maxItems`, `minItems`, `maxLength`,
`minLength`, a pattern's `{m,n}`), so `{"maxItems": 1000000000}` alone would take
gigabytes; their sum over the schema may be at most MAX_REPETITIONS (checked before
converting, `check_schema`, which also refuses a `$ref` to anything outside the
schema), and the grammar at most MAX_GRAMMAR_CHARS.

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
_REPEAT_KEYWORDS = ("minItems", "maxItems", "minLength", "maxLength")
_PATTERN_BOUND = re.compile(r"\{\s*(\d+)\s*(?:,\s*(\d*)\s*)?\}")


def grammar_for(response_format: ResponseFormat) -> str:
    """The GBNF grammar of `response_format`; InvalidResponseFormat for a bad schema."""
    from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

    if response_format.kind == "json_object":
        return str(JSON_GBNF)
    try:
        schema = json.loads(response_format.schema)
    except ValueError as e:
        raise InvalidResponseFormat(f"response_format.json_schema is not valid JSON: {e}") from e
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
    """InvalidResponseFormat if the bounds in `schema` ask for more than MAX_REPETITIONS
    repetitions in all (counted without converting: the converter would build them), or
    if it has a `$ref` outside itself (the converter refuses to fetch one only by an
    `assert`, which `python -O` drops)."""
    total = 0
    stack: list[Any] = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        for key in _REPEAT_KEYWORDS:
            value = node.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                total += _bound(value)
        ref = node.get("$ref")
        if isinstance(ref, str) and not ref.startswith("#"):
            raise InvalidResponseFormat(
                "response_format.json_schema cannot be turned into a grammar: "
                f"only references within the schema (#/...) are supported, not {ref[:100]!r}"
            )
        pattern = node.get("pattern")
        if isinstance(pattern, str):
            for low, high in _PATTERN_BOUND.findall(pattern):
                digits = high or low
                total += _bound(int(digits) if len(digits) < 10 else MAX_REPETITIONS + 1)
        if total > MAX_REPETITIONS:
            raise InvalidResponseFormat(
                "response_format.json_schema asks for too many repetitions (its minItems, "
                f"maxItems, minLength, maxLength and pattern bounds add up to over "
                f"{MAX_REPETITIONS})"
            )
        stack.extend(node.values())


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
