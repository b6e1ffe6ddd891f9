"""The requests of the OpenAI-compatible endpoint, as pydantic models: the fields OpenAI
defines that the node serves are checked (a clear 400 naming the field otherwise);
fields it does not know are accepted and ignored, as OpenAI's servers and most
compatible ones do, so that clients sending newer fields keep working.

Roles `developer` (OpenAI's newer name for system) and `system` both become system turns.
Only text content is served: a string, or a list of `{"type": "text"}` parts (joined).
`stop`: at most MAX_STOPS strings of at most MAX_STOP_CHARS characters each.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from consortium.llm.base import ChatMessage, ResponseFormat, Role
from consortium.node.service import Sampling

MAX_STOPS = 4
# Each stop string's characters: text that may begin one is held back and compared at
# every token, so a long one costs the generation time (its square, at worst).
MAX_STOP_CHARS = 1024
MAX_TOP_LOGPROBS = 20
MAX_TEXT_LOGPROBS = 5
# RequestOptions' own limit of a task's max_tokens.
MAX_TOKENS = 32768
SEED_MAX = 2**63 - 1


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Lenient):
    include_usage: bool = False


class MessageIn(_Lenient):
    role: Literal["system", "developer", "user", "assistant"]
    # The text: a string, or the text parts joined.
    content: str
    name: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _text(cls, v: Any) -> str:
        if v is None:
            raise ValueError("content is required (tool calls are not supported)")
        if isinstance(v, str):
            return v
        if not isinstance(v, list):
            raise ValueError("content must be a string or a list of text parts")
        texts = []
        for i, part in enumerate(v):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind != "text":
                shown = f" {kind!r}" if isinstance(kind, str) else ""
                raise ValueError(
                    f"content[{i}]: only text parts are supported, not part type{shown}"
                )
            text = part.get("text")
            if not isinstance(text, str):
                raise ValueError(f"content[{i}].text must be a string")
            texts.append(text)
        return "".join(texts)

    def chat_message(self) -> ChatMessage:
        role: Role = "system" if self.role == "developer" else self.role
        return ChatMessage(role, self.content)


class JsonSchemaIn(_Lenient):
    name: Annotated[str, Field(min_length=1, max_length=64)]
    # The JSON Schema itself; OpenAI's `strict` and `description` are accepted.
    schema_: Annotated[dict[str, Any], Field(alias="schema")] = Field(default_factory=dict)
    strict: bool | None = None
    description: str | None = None


class ResponseFormatIn(_Lenient):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaIn | None = None

    @model_validator(mode="after")
    def _schema(self) -> ResponseFormatIn:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("json_schema is required with type json_schema")
        return self

    def format(self) -> ResponseFormat | None:
        if self.type == "text":
            return None
        if self.type == "json_object":
            return ResponseFormat("json_object")
        assert self.json_schema is not None
        return ResponseFormat("json_schema", json.dumps(self.json_schema.schema_))


class _Common(_Lenient):
    """What chat and text completions share."""

    model: Annotated[str, Field(min_length=1, max_length=300)]
    max_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    seed: Annotated[int, Field(ge=0, le=SEED_MAX)] | None = None
    stop: str | Annotated[list[str], Field(max_length=MAX_STOPS)] | None = None
    n: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    # The end user, for the caller's own records: accepted, not stored or logged.
    user: str | None = None
    # Consortium's own options: a multiple-choice task for a group (`choices`) and the
    # task's budget, as in an A2A message's metadata["consortium"].
    consortium: dict[str, Any] | None = None

    @field_validator("n")
    @classmethod
    def _one(cls, v: int | None) -> int | None:
        if v is not None and v != 1:
            raise ValueError("only n=1 is supported: one choice per request")
        return v

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> str | list[str] | None:
        stops = [v] if isinstance(v, str) else v or []
        if any(not s for s in stops):
            raise ValueError("a stop sequence cannot be empty")
        if any(len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(f"a stop sequence can have at most {MAX_STOP_CHARS} characters")
        return v

    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def token_limit(self) -> int | None:
        """The answer's most tokens, if the request sets it."""
        return self.max_tokens

    @property
    def streaming(self) -> bool:
        return bool(self.stream)

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class ChatCompletionRequest(_Common):
    messages: Annotated[list[MessageIn], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS)] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None
    response_format: ResponseFormatIn | None = None

    @model_validator(mode="after")
    def _checks(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs set to true")
        if not any(m.role == "user" for m in self.messages):
            raise ValueError("messages must hold at least one message with role user")
        return self

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def sampling(self) -> Sampling:
        return Sampling(
            top_p=self.top_p,
            seed=self.seed,
            stop=self.stops(),
            logprobs=bool(self.logprobs),
            top_logprobs=self.top_logprobs or 0,
            response_format=self.response_format.format() if self.response_format else None,
        )

    def conversation(self) -> tuple[ChatMessage, ...]:
        return tuple(m.chat_message() for m in self.messages)

    def question(self) -> str:
        """The last user turn's text."""
        return next(m.content for m in reversed(self.messages) if m.role == "user")


class CompletionRequest(_Common):
    # One prompt: a string, or a list holding one string.
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)]
    # How many alternatives per token (0-5): any value asks for the tokens' logprobs.
    logprobs: Annotated[int, Field(ge=0, le=MAX_TEXT_LOGPROBS)] | None = None
    echo: bool | None = None
    best_of: int | None = None
    suffix: str | None = None

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, v: bool | None) -> bool | None:
        if v:
            raise ValueError("echo is not supported: the response holds the completion only")
        return v

    @field_validator("best_of")
    @classmethod
    def _no_best_of(cls, v: int | None) -> int | None:
        if v is not None and v != 1:
            raise ValueError("only best_of=1 is supported: one completion per request")
        return v

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, v: str | None) -> str | None:
        if v:
            raise ValueError("suffix (insertion) is not supported")
        return v

    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def sampling(self) -> Sampling:
        return Sampling(
            top_p=self.top_p,
            seed=self.seed,
            stop=self.stops(),
            logprobs=self.logprobs is not None,
            top_logprobs=self.logprobs or 0,
        )
