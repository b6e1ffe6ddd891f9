"""ASGI middleware in front of the node's HTTP app: what a request must be before the
JSON-RPC binding (a2a-sdk) sees it.

- A body over `server.max_message_bytes` gets HTTP 413 and JSON-RPC -32600.
- A POST whose Content-Type is not JSON gets HTTP 415 and -32005 (ContentTypeNotSupported).
- A POST to the JSON-RPC path whose body is not strict JSON gets -32700 (parse error,
  HTTP 200 like a2a-sdk's own): bytes that are not UTF-8, the NaN / Infinity / -Infinity
  literals Python's json module accepts, a number beyond a double's range, an integer
  over Python's 4,300-digit conversion limit, a string with an unpaired surrogate, or
  nesting deeper than MAX_JSON_DEPTH. a2a-sdk would answer some of these -32603 (the
  digit limit, deep nesting), accept others into a task it can no longer serialize
  (NaN), or fail to render its own reply (a surrogate in the request id).
- A request without an `A2A-Version` header is for version 1.0, as the README says;
  a2a-sdk's JSON-RPC binding reads a missing header as 0.3 and refuses the call, so the
  guard adds `A2A-Version: 1.0` to such a request.

Another API on the same port (the OpenAI-compatible one under /v1) is guarded the same
way, in its own words: the guard is given its path prefix and a `Renderer` that turns
each `Refusal` (too large, wrong content type, not strict JSON) into that API's error
response. Its POST bodies are checked as strict JSON too, and its requests get no
A2A-Version header.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from consortium.node.a2a.agent_card import JSONRPC_PATH

JSON_MEDIA_TYPES = frozenset({"application/json", "application/a2a+json"})
# What the guard lets through to the binding. A message's Structs may be at most
# validation.MAX_STRUCT_DEPTH deep, but a deeper one (up to about this limit) is still
# parsed so that the client learns which field is too deep (-32602), not just "-32700";
# a2a-sdk's parser stays far from Python's recursion limit at this depth.
MAX_JSON_DEPTH = 128
VERSION_HEADER = b"a2a-version"
DEFAULT_VERSION = b"1.0"

# A \uD800-\uDFFF escape: the only way a string can hold a surrogate after a strict
# UTF-8 decode. Paired ones are fine (json joins them); this only selects the bodies
# worth the full check.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")


def _jsonrpc_error(code: int, message: str, http_status: int) -> JSONResponse:
    return JSONResponse(
        {"jsonrpc": "2.0", "id": None, "error": {"code": code, "message": message}},
        status_code=http_status,
    )


Problem = Literal["too_large", "content_type", "not_json"]


@dataclass(frozen=True)
class Refusal:
    """Why the guard refuses a request, for the API it was sent to to word."""

    problem: Problem
    message: str


Renderer = Callable[[Refusal], Response]

_JSONRPC_CODES: dict[Problem, tuple[int, int]] = {
    "too_large": (-32600, 413),
    "content_type": (-32005, 415),
    "not_json": (-32700, 200),  # HTTP 200 like a2a-sdk's own parse errors
}


def jsonrpc_refusal(refusal: Refusal) -> Response:
    """The JSON-RPC binding's words for a refusal."""
    code, status = _JSONRPC_CODES[refusal.problem]
    return _jsonrpc_error(code, refusal.message, status)


class _NotStrictJson(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise _NotStrictJson(f"{name} is not a JSON value")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _NotStrictJson(f"number {text[:40]} is beyond the range of a double")
    return value


def strict_json_error(body: bytes) -> str | None:
    """Why `body` is not strict JSON (RFC 8259 in UTF-8, I-JSON's limits on numbers and
    strings, at most MAX_JSON_DEPTH deep); None if it is."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        return f"the body is not UTF-8 (byte {e.start})"
    text = text.removeprefix("\ufeff")  # RFC 8259 lets a parser ignore a BOM
    try:
        value = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError:
        return f"JSON nested deeper than {MAX_JSON_DEPTH} levels"
    except ValueError as e:  # JSONDecodeError, the integer digit limit, _NotStrictJson
        return f"invalid JSON: {e}"
    # Counting brackets (in C) first spares the walk for almost every body.
    if body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH and _too_deep(value):
        return f"JSON nested deeper than {MAX_JSON_DEPTH} levels"
    if _SURROGATE_ESCAPE.search(body) is not None:
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            return "a JSON string holds an unpaired UTF-16 surrogate"
    return None


def _too_deep(value: object) -> bool:
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children: Any
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > MAX_JSON_DEPTH:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def with_default_version(scope: Scope) -> Scope:
    """The scope, with `A2A-Version: 1.0` if the request names no version."""
    headers = scope.get("headers") or []
    if any(key.lower() == VERSION_HEADER and value.strip() for key, value in headers):
        return scope
    kept = [(k, v) for k, v in headers if k.lower() != VERSION_HEADER]
    return {**scope, "headers": [*kept, (VERSION_HEADER, DEFAULT_VERSION)]}


class RequestGuard:
    """ASGI middleware in front of the JSON-RPC app (see the module docstring). `apis`:
    the path prefixes of other APIs on the port (e.g. "/v1"), each with its renderer."""

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        rpc_path: str = JSONRPC_PATH,
        *,
        apis: Mapping[str, Renderer] | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.rpc_path = rpc_path
        self.apis = dict(apis or {})

    def _api_of(self, path: str) -> Renderer | None:
        """The renderer of the other API that serves `path`, if one does."""
        for prefix, render in self.apis.items():
            if path == prefix or path.startswith(prefix + "/"):
                return render
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        other = self._api_of(path)
        render = other or jsonrpc_refusal
        if other is None:
            scope = with_default_version(scope)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(render, scope, receive, send)
            return
        content_type = headers.get(b"content-type", b"").decode("latin-1")
        media_type = content_type.split(";")[0].strip().lower()
        post = scope.get("method") == "POST"
        if post and media_type and media_type not in JSON_MEDIA_TYPES:
            message = f"content type {media_type!r} is not supported; send application/json"
            await render(Refusal("content_type", message))(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            body = msg.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                await self._too_large(render, scope, receive, send)
                return
            chunks.append(body)
            more = msg.get("more_body", False)
        whole = b"".join(chunks)
        if post and (path == self.rpc_path or other is not None):
            problem = strict_json_error(whole)
            if problem is not None:
                await render(Refusal("not_json", problem))(scope, receive, send)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": whole, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(
        self, render: Renderer, scope: Scope, receive: Receive, send: Send
    ) -> None:
        message = f"request body exceeds the limit of {self.max_bytes} bytes"
        await render(Refusal("too_large", message))(scope, receive, send)
