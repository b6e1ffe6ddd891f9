"""LLM backends behind one interface: llama.cpp (default), transformers, and an echo model
for network tests; plus the worker that runs a model off the event loop."""

from consortium.llm.base import (
    ChatMessage,
    Chunk,
    Completion,
    GenerationParams,
    LLMBackend,
    ModelInfo,
    TokenLogprob,
    Usage,
)
from consortium.llm.worker import GenerationRequest, GenerationStream, ModelWorker

__all__ = [
    "ChatMessage",
    "Chunk",
    "Completion",
    "GenerationParams",
    "GenerationRequest",
    "GenerationStream",
    "LLMBackend",
    "ModelInfo",
    "ModelWorker",
    "TokenLogprob",
    "Usage",
]
