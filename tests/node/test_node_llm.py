"""A node with real models behind A2A: answers over gRPC and JSON-RPC, streams tokens,
cancels mid-generation, and drives both bundled models and the transformers backend."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from a2a.types import a2a_pb2, a2a_pb2_grpc
from a2a.utils.constants import TransportProtocol

from consortium.node.client import ask, fetch_agent_card, open_client, text_message
from tests.conftest import NodeStarter


@pytest.mark.parametrize(
    ("model", "transport"),
    [
        ("smollm2-135m", TransportProtocol.GRPC),
        ("gemma3-270m", TransportProtocol.GRPC),
        ("smollm2-135m", TransportProtocol.JSONRPC),
    ],
)
async def test_real_model_answers_over_a2a(
    start_node: NodeStarter, model: str, transport: str
) -> None:
    node = await start_node(
        model={"backend": "llama_cpp", "name": model, "context_size": 1024, "threads": 2}
    )
    card = await fetch_agent_card(node.endpoints.http_url)
    client = open_client(card, transport=transport)
    pieces: list[str] = []
    try:
        answer = await ask(
            client,
            "What is the capital of France?",
            options={"max_tokens": 24},
            on_text=pieces.append,
        )
    finally:
        await client.close()
    assert answer.state == "completed"
    assert "Paris" in answer.text
    assert "".join(pieces) == answer.text
    p = answer.provenance
    assert p.model == model and p.backend == "llama_cpp" and p.org == "acme"
    assert 0 < p.output_tokens <= 24 and p.input_tokens > 5


async def test_cancel_mid_generation_with_a_real_model(start_node: NodeStarter) -> None:
    node = await start_node(
        model={"backend": "llama_cpp", "name": "smollm2-135m", "max_tokens": 1000}
    )
    async with grpc.aio.insecure_channel(node.endpoints.grpc_target) as ch:
        s = a2a_pb2_grpc.A2AServiceStub(ch)
        call = s.SendStreamingMessage(
            a2a_pb2.SendMessageRequest(
                message=text_message("Write a very long story about a dragon and a knight.")
            )
        )
        task_id, seen = "", 0
        async for event in call:
            if event.HasField("task"):
                task_id = event.task.id
            if event.HasField("artifact_update"):
                seen += 1
                if seen == 3:
                    break
        canceled = await s.CancelTask(a2a_pb2.CancelTaskRequest(id=task_id))
        call.cancel()
        assert canceled.status.state == a2a_pb2.TASK_STATE_CANCELED
        # The model is free again: the next task is answered, not stuck behind the story.
        nxt = await asyncio.wait_for(
            s.SendMessage(a2a_pb2.SendMessageRequest(message=text_message("Say hi."))), timeout=60
        )
        assert nxt.task.status.state == a2a_pb2.TASK_STATE_COMPLETED


async def test_missing_model_file_fails_start_clearly(
    start_node: NodeStarter, tmp_path: Path
) -> None:
    from consortium.errors import ModelError

    with pytest.raises(ModelError, match="model file not found"):
        await start_node(model={"backend": "llama_cpp", "path": str(tmp_path / "gone.gguf")})


async def test_transformers_backend_behind_a2a(start_node: NodeStarter, smollm_path: Path) -> None:
    node = await start_node(
        model={
            "backend": "transformers",
            "name": "smollm2-135m-hf",
            "path": str(smollm_path.parent),
            "gguf_file": smollm_path.name,
            "threads": 2,
        }
    )
    card = await fetch_agent_card(node.endpoints.http_url)
    client = open_client(card)
    try:
        answer = await ask(client, "What is the capital of France?", options={"max_tokens": 16})
    finally:
        await client.close()
    assert answer.state == "completed"
    assert "Paris" in answer.text
    assert answer.provenance.backend == "transformers"


async def test_transformers_backend_loads_a_model_directory(
    tmp_path: Path, smollm_path: Path
) -> None:
    import copy
    import threading

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from consortium.errors import UnsupportedByModel
    from consortium.llm.base import ChatMessage, GenerationParams, ResponseFormat
    from consortium.llm.transformers_backend import TransformersBackend

    # A plain transformers model directory, made from the bundled GGUF.
    directory = tmp_path / "smollm2-hf"
    kwargs = {"gguf_file": smollm_path.name}
    AutoTokenizer.from_pretrained(str(smollm_path.parent), **kwargs).save_pretrained(directory)
    loaded = AutoModelForCausalLM.from_pretrained(str(smollm_path.parent), **kwargs)
    config = copy.deepcopy(loaded.config)
    del config.quantization_config  # dequantised weights, saved as plain safetensors
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(loaded.state_dict())
    plain.save_pretrained(directory)
    backend = TransformersBackend(directory, name="smollm2-hf", threads=2)
    # No grammar: JSON-constrained output is refused before anything is generated.
    assert "grammar" not in backend.info.capabilities
    with pytest.raises(UnsupportedByModel, match="cannot constrain output to JSON"):
        backend.stream_chat(
            [ChatMessage("user", "Reply in JSON.")],
            GenerationParams(response_format=ResponseFormat("json_object")),
            threading.Event(),
        )
    gen = backend.stream_chat(
        [ChatMessage("user", "What is the capital of France?")],
        GenerationParams(max_tokens=12),
        threading.Event(),
    )
    text = ""
    while True:
        try:
            text += next(gen).text
        except StopIteration as stop:
            completion = stop.value
            break
    assert completion.text == text and completion.usage.output_tokens > 0
    scores = backend.score(
        "Question: What is the capital of France?\nAnswer:", [" Paris", " Berlin"]
    )
    assert scores[0] > scores[1]
