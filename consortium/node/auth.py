"""Who is calling: the credentials each binding carries, and the caller they prove.

Both bindings collect the raw credentials of a call — the `authorization` header or
metadata (an API key), a member's signed call proof (`x-consortium-proof`), whether the
peer address is loopback, and the names in a verified TLS client certificate — into the
call context (`CREDENTIALS_KEY`). The request handler turns them into a `Caller` before
any task is looked up, so the same rules hold on gRPC and JSON-RPC:

- an API key (`Authorization: Bearer csk_...`) makes the caller that key (`key:ID`);
- a member of the federation proves itself with its signature: on the message it sends,
  or, for the task methods, with a signed call proof bound to the method, its parameters,
  this node, a fresh time and a nonce (`org:ID`); under mutual TLS its signature counts
  only over a client certificate that names it (`tls.member_cn`): the certificate's
  names reach both bindings alike (gRPC's auth context, the HTTP server's connection),
  and the request handler holds the member to them with one check for both;
- without credentials, a caller from the loopback interface is the anonymous local user
  (`anonymous`) where `auth.anonymous_loopback` allows it; anyone else is refused.

The caller's scope is the owner of the tasks it creates, and the only tasks it can see.
`key_caller` (`key_caller_async` on the event loop) is the API-key rule, shared by the
A2A handler and the OpenAI-compatible endpoint (node/openai/), which takes API keys and
the anonymous loopback user only.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass, field
from typing import Literal

import grpc
from a2a.auth.user import User
from a2a.server.context import ServerCallContext
from a2a.server.request_handlers import DefaultGrpcServerCallContextBuilder
from a2a.server.routes.common import DefaultServerCallContextBuilder
from starlette.requests import Request

from consortium.trust.api_keys import ApiKeys, parse_token
from consortium.trust.call_proof import PROOF_HEADER

CREDENTIALS_KEY = "consortium.credentials"
# Where the HTTP server puts the names of a connection's verified TLS client certificate
# in each request's scope state (node/a2a/http_binding.py).
TLS_NAMES_STATE = "consortium.tls_names"
AUTHORIZATION = "authorization"

CallerKind = Literal["key", "member", "anonymous"]


@dataclass(frozen=True)
class Credentials:
    """What a call presented; nothing here is verified yet."""

    authorization: str | None = None
    proof: str | None = None
    loopback: bool = False
    # Common name and DNS names of the client certificate the TLS layer verified (mTLS).
    tls_names: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Caller:
    kind: CallerKind
    id: str
    admin: bool = False

    @property
    def owner(self) -> str:
        """The scope its tasks are stored under."""
        if self.kind == "key":
            return f"key:{self.id}"
        if self.kind == "member":
            return f"org:{self.id}"
        return "anonymous"


ANONYMOUS = Caller("anonymous", "loopback")


class CallerUser(User):
    """a2a-sdk's notion of the user: its `user_name` scopes the task store."""

    def __init__(self, caller: Caller) -> None:
        self.caller = caller

    @property
    def is_authenticated(self) -> bool:
        return self.caller.kind != "anonymous"

    @property
    def user_name(self) -> str:
        return self.caller.owner


def key_caller(authorization: str, keys: ApiKeys | None) -> Caller | None:
    """The caller an `Authorization: Bearer` value proves: its API key, if the key is
    valid now (not revoked, not expired); None otherwise. May query the database: the
    bindings call `key_caller_async`."""
    token = parse_token(authorization)
    key = keys.authenticate(token) if token and keys is not None else None
    return None if key is None else Caller("key", key.id, key.admin)


async def key_caller_async(authorization: str, keys: ApiKeys | None) -> Caller | None:
    """`key_caller` for the event loop (a database lookup, if any, runs off it)."""
    token = parse_token(authorization)
    key = await keys.authenticate_async(token) if token and keys is not None else None
    return None if key is None else Caller("key", key.id, key.admin)


def caller_of(context: ServerCallContext) -> Caller | None:
    """The authenticated caller of a call, once the handler has decided it."""
    user = context.user
    return user.caller if isinstance(user, CallerUser) else None


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    return _is_loopback(host)


@functools.lru_cache(maxsize=4096)
def _is_loopback(host: str) -> bool:
    """Parsing an address costs more than the rest of a call's admission: remembered per
    host (the cache is bounded; peers' hosts are few)."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def grpc_peer_host(peer: str) -> str | None:
    """The host of a grpc peer string ('ipv4:127.0.0.1:5000', 'ipv6:[::1]:5000')."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    if kind == "ipv6":
        return rest.rpartition(":")[0].strip("[]")
    return None


def _first(values: list[str]) -> str | None:
    return values[0] if values else None


def grpc_credentials(context: grpc.aio.ServicerContext) -> Credentials:
    metadata: dict[str, list[str]] = {}
    for key, value in context.invocation_metadata() or ():
        text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
        metadata.setdefault(key.lower(), []).append(text)
    auth = context.auth_context() or {}
    names = [
        v.decode("utf-8", "replace")
        for k in ("x509_common_name", "x509_subject_alternative_name")
        for v in auth.get(k, ())
    ]
    return Credentials(
        authorization=_first(metadata.get(AUTHORIZATION, [])),
        proof=_first(metadata.get(PROOF_HEADER, [])),
        loopback=is_loopback(grpc_peer_host(context.peer() or "")),
        tls_names=tuple(names),
    )


def http_credentials(request: Request) -> Credentials:
    names = request.scope.get("state", {}).get(TLS_NAMES_STATE, ())
    return Credentials(
        authorization=request.headers.get(AUTHORIZATION),
        proof=request.headers.get(PROOF_HEADER),
        loopback=is_loopback(request.client.host if request.client else None),
        tls_names=tuple(names),
    )


class GrpcContextBuilder(DefaultGrpcServerCallContextBuilder):
    """a2a-sdk's gRPC call context, with the call's credentials."""

    def build(self, context: grpc.aio.ServicerContext) -> ServerCallContext:
        call = super().build(context)
        call.state[CREDENTIALS_KEY] = grpc_credentials(context)
        return call


class HttpContextBuilder(DefaultServerCallContextBuilder):
    """a2a-sdk's JSON-RPC call context, with the call's credentials."""

    def build(self, request: Request) -> ServerCallContext:
        call = super().build(request)
        # The SDK keeps every request header in the state; the API key has no business
        # there once it is read.
        headers = call.state.pop("headers", {})
        call.state[CREDENTIALS_KEY] = http_credentials(request)
        call.state["headers"] = {
            k: v for k, v in headers.items() if k not in (AUTHORIZATION, PROOF_HEADER)
        }
        return call


def credentials_of(context: ServerCallContext) -> Credentials:
    creds = context.state.get(CREDENTIALS_KEY)
    return creds if isinstance(creds, Credentials) else Credentials()
