"""One real model behind the OpenAI endpoint (SmolLM2-135M through llama.cpp): a chat
completion with token logprobs and alternatives, its text the tokens' concatenation,
a raw-prompt text completion, a prompt too long for the context window; and JSON
output (response_format json_schema) held to its schema by llama.cpp's grammar, and a
schema the grammar cannot take (or one too large to bound the model's work) refused as
the request's fault."""

from __future__ import annotations

import json
import math
from pathlib import Path

import openai
import pytest

from tests.node.openai.conftest import node_thread


@pytest.mark.slow
def test_smollm_chat_and_completion(tmp_path: Path) -> None:
    for api in node_thread(
        tmp_path, model={"backend": "llama_cpp", "name": "smollm2-135m", "max_tokens": 64}
    ):
        client = api.client(api.new_key("real"))
        r = client.chat.completions.create(
            model="smollm2-135m",
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=12,
            logprobs=True,
            top_logprobs=3,
        )
        choice = r.choices[0]
        assert choice.message.content and choice.finish_reason in ("stop", "length")
        assert choice.logprobs is not None and choice.logprobs.content
        tokens = choice.logprobs.content
        assert "".join(t.token for t in tokens) == choice.message.content
        assert all(t.logprob <= 0 and math.isfinite(t.logprob) for t in tokens)
        assert all(len(t.top_logprobs) == 3 for t in tokens)
        assert r.usage is not None and r.usage.completion_tokens == len(tokens)
        text = client.completions.create(
            model="smollm2-135m", prompt="1, 2, 3, 4,", max_tokens=6, temperature=0, seed=1
        )
        assert text.choices[0].text and text.usage is not None
        assert text.usage.completion_tokens <= 6
        # A prompt beyond the context window: refused before any generation.
        with pytest.raises(openai.BadRequestError) as e:
            client.completions.create(model="smollm2-135m", prompt="word " * 3000)
        assert e.value.code == "context_length_exceeded" and e.value.param == "prompt"


@pytest.mark.slow
def test_smollm_json_output_through_the_endpoint(tmp_path: Path) -> None:
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 24},
            "size": {"type": "integer", "enum": [1, 2, 3]},
        },
        "required": ["city", "size"],
        "additionalProperties": False,
    }
    for api in node_thread(
        tmp_path, model={"backend": "llama_cpp", "name": "smollm2-135m", "max_tokens": 64}
    ):
        client = api.client(api.new_key("json"))
        r = client.chat.completions.create(
            model="smollm2-135m",
            messages=[{"role": "user", "content": "A city and its size as JSON."}],
            max_tokens=64,
            response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}},
        )
        assert r.choices[0].finish_reason == "stop"
        value = json.loads(r.choices[0].message.content or "")
        assert set(value) == {"city", "size"} and value["size"] in (1, 2, 3)
        # A schema llama.cpp's converter cannot take: the request's fault, named.
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(
                model="smollm2-135m",
                messages=[{"role": "user", "content": "hi"}],
                max_tokens=8,
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": "bad", "schema": {"type": "frobnicate"}},
                },
            )
        assert e.value.code == "invalid_response_format" and e.value.param == "response_format"
        assert "response_format.json_schema" in e.value.message
        # One that would hold the model for tens of seconds a token: refused, named.
        huge = {"type": "string", "enum": [f"value-{i:06d}" for i in range(50_000)]}
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(
                model="smollm2-135m",
                messages=[{"role": "user", "content": "hi"}],
                max_tokens=8,
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": "huge", "schema": huge},
                },
            )
        assert e.value.code == "invalid_response_format" and e.value.param == "response_format"
        assert "too many enum values" in e.value.message
