"""Turns a user's question into what a model takes: chat messages, or a few-shot prompt.

Chat models get their own chat template (applied by the backend). Base models such as
Gemma-3-270M answer nothing through a chat template; they get a completion-style
few-shot prompt and stop at the next question.

A whole conversation (earlier turns, system messages) goes to a chat model as it is,
after the node's system prompt unless the conversation brings its own; a base model,
and anything that takes one text (a peer), gets it flattened (`flatten_conversation`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

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


ROLE_NAMES = {"system": "System", "user": "User", "assistant": "Assistant"}


def flatten_conversation(turns: Sequence[ChatMessage]) -> str:
    """A conversation as one text: each turn `Role: content`, separated by a blank line."""
    return "\n\n".join(f"{ROLE_NAMES[t.role]}: {t.content}" for t in turns)


def build_request(
    question: str,
    *,
    prompt_format: PromptFormat,
    system_prompt: str,
    params: GenerationParams,
    conversation: Sequence[ChatMessage] = (),
) -> GenerationRequest:
    """The request for `question`, or for the whole `conversation` when one is given
    (`question` then being its last user turn)."""
    if prompt_format == "completion":
        stops = tuple(params.stop) + COMPLETION_STOPS
        many = len(conversation) > 1 or any(t.role != "user" for t in conversation)
        text = flatten_conversation(conversation) if many else question
        return GenerationRequest(params=replace(params, stop=stops), prompt=completion_prompt(text))
    messages: list[ChatMessage] = []
    if system_prompt and not any(t.role == "system" for t in conversation):
        messages.append(ChatMessage("system", system_prompt))
    messages.extend(conversation or (ChatMessage("user", question),))
    return GenerationRequest(params=params, messages=tuple(messages))
