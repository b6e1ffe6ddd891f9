"""The node's request handler when it belongs to a federation: every incoming message is
verified (signature, membership, recipient, federation, freshness, replay) before the
task machinery or the model sees it. Refusals are counted per reason and logged with
identifiers only, never the payload."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from a2a.server.context import ServerCallContext
from a2a.server.events import Event
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.types import a2a_pb2
from jwcrypto import jwk

from consortium.protocols.a2a_errors import from_rejection
from consortium.protocols.signed_message import (
    Claims,
    MessageVerifier,
    Rejected,
    digest,
    sign_message,
)

log = logging.getLogger(__name__)

VERIFIED_KEY = "consortium.verified"


@dataclass(frozen=True)
class VerifiedRequest:
    """What the executor learns about a verified request (in the call context's state)."""

    claims: Claims
    digest: str


class FederatedRequestHandler(DefaultRequestHandler):
    def __init__(self, *args: object, verifier: MessageVerifier, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.verifier = verifier
        self.refusals: Counter[str] = Counter()

    def _verify(self, params: a2a_pb2.SendMessageRequest, context: ServerCallContext) -> None:
        try:
            claims = self.verifier.verify(params.message)
        except Rejected as e:
            self.refusals[e.reason] += 1
            log.warning(
                "refused message %s: %s (%s)", params.message.message_id or "-", e.reason, e.code
            )
            raise from_rejection(e) from None
        context.state[VERIFIED_KEY] = VerifiedRequest(claims, digest(params.message))

    async def on_message_send(
        self, params: a2a_pb2.SendMessageRequest, context: ServerCallContext
    ) -> a2a_pb2.Message | a2a_pb2.Task:
        self._verify(params, context)
        result: a2a_pb2.Message | a2a_pb2.Task = await super().on_message_send(params, context)
        return result

    async def on_message_send_stream(
        self, params: a2a_pb2.SendMessageRequest, context: ServerCallContext
    ) -> AsyncGenerator[Event, None]:
        self._verify(params, context)
        async for event in super().on_message_send_stream(params, context):
            yield event


class ResponseSigner:
    """Signs what this node sends back to a peer, bound to the peer's request."""

    def __init__(self, *, org_id: str, federation_id: str, key: jwk.JWK) -> None:
        self.org_id = org_id
        self.federation_id = federation_id
        self.key = key

    def sign_reply(self, message: a2a_pb2.Message, request: VerifiedRequest) -> a2a_pb2.Message:
        return sign_message(
            message,
            key=self.key,
            sender=self.org_id,
            recipient=request.claims.sender,
            federation=self.federation_id,
            request_digest=request.digest,
            traceparent=request.claims.traceparent,
        )

    def sign_request(self, message: a2a_pb2.Message, recipient: str) -> a2a_pb2.Message:
        return sign_message(
            message,
            key=self.key,
            sender=self.org_id,
            recipient=recipient,
            federation=self.federation_id,
        )
