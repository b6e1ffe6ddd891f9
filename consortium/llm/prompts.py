"""Turns a user's question into what a model takes: chat messages, or a few-shot prompt.

Chat models get their own chat template (applied by the backend). Base models such as
Gemma-3-270M answer nothing through a chat template; they get a completion-style
few-shot prompt and stop at the next question.
"""

from __future__ import annotations

from consortium.llm.base import ChatMessage, GenerationParams
from consortium.llm.registry import PromptFormat
from consortium.llm.worker import GenerationRequest

FEW_SHOT = (
    "Below are questions, each followed by a short, correct answer.\n\n"
    "Question: What is the capital of France?\n"
    "Answer: The capital of France is Paris.\n\n"
    "Question: How many legs does a spider have?\n"
    "Answer: A spider has eight legs.\n\n"
    "Question: What gas do plants take in from the air to make food?\n"
    "Answer: Plants take in carbon dioxide.\n\n"
)
COMPLETION_STOPS = ("\nQuestion:", "\n\n")


def completion_prompt(question: str) -> str:
    return f"{FEW_SHOT}Question: {question.strip()}\nAnswer:"


def build_request(
    question: str, *, prompt_format: PromptFormat, system_prompt: str, params: GenerationParams
) -> GenerationRequest:
    if prompt_format == "completion":
        stops = tuple(params.stop) + COMPLETION_STOPS
        return GenerationRequest(
            params=GenerationParams(
                max_tokens=params.max_tokens,
                temperature=params.temperature,
                top_p=params.top_p,
                stop=stops,
                logprobs=params.logprobs,
                top_logprobs=params.top_logprobs,
                seed=params.seed,
            ),
            prompt=completion_prompt(question),
        )
    messages: list[ChatMessage] = []
    if system_prompt:
        messages.append(ChatMessage("system", system_prompt))
    messages.append(ChatMessage("user", question))
    return GenerationRequest(params=params, messages=tuple(messages))
