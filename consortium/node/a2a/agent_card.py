"""The node's A2A agent card: who it is, where to reach it, what it does and with which model."""

from __future__ import annotations

import json
from typing import Any

from a2a.types import a2a_pb2
from a2a.utils.constants import PROTOCOL_VERSION_CURRENT, TransportProtocol
from google.protobuf.json_format import MessageToDict

from consortium import __version__
from consortium.protocols.extensions import IDENTITY_EXTENSION_URI, MODEL_EXTENSION_URI
from consortium.trust.claims import EXTENSION_URI as SIGNED_MESSAGE_URI

JSONRPC_PATH = "/"


def build_agent_card(
    *,
    org_id: str,
    display_name: str,
    description: str,
    grpc_url: str,
    http_url: str,
    model_name: str,
    model_backend: str,
    context_size: int,
    public_keys: list[dict[str, Any]] | None = None,
    federation_id: str = "",
    mutual_tls: bool = False,
) -> a2a_pb2.AgentCard:
    name = display_name or org_id
    card = a2a_pb2.AgentCard(
        name=name,
        description=description,
        version=__version__,
        provider=a2a_pb2.AgentProvider(organization=name, url=http_url),
        supported_interfaces=[
            a2a_pb2.AgentInterface(
                url=grpc_url,
                protocol_binding=TransportProtocol.GRPC,
                protocol_version=PROTOCOL_VERSION_CURRENT,
            ),
            a2a_pb2.AgentInterface(
                url=http_url.rstrip("/") + JSONRPC_PATH,
                protocol_binding=TransportProtocol.JSONRPC,
                protocol_version=PROTOCOL_VERSION_CURRENT,
            ),
        ],
        capabilities=a2a_pb2.AgentCapabilities(streaming=True, push_notifications=False),
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain"],
        skills=[
            a2a_pb2.AgentSkill(
                id="answer",
                name="Answer a question",
                description=f"Answers a question in text with {org_id}'s local model {model_name}.",
                tags=["question-answering", "llm", model_name],
                examples=["What is the boiling point of water at sea level?"],
                input_modes=["text/plain"],
                output_modes=["text/plain"],
            )
        ],
    )
    _declare_security(card, mutual_tls)
    ext = card.capabilities.extensions.add()
    ext.uri = MODEL_EXTENSION_URI
    ext.description = "The organization and model that answer tasks on this node."
    ext.required = False
    ext.params.update(
        {
            "org_id": org_id,
            "model": model_name,
            "backend": model_backend,
            "context_size": context_size,
        }
    )
    if public_keys:
        identity = card.capabilities.extensions.add()
        identity.uri = IDENTITY_EXTENSION_URI
        identity.description = (
            "The organization's id and public signing keys (JWK, kid = RFC 7638)."
        )
        identity.required = False
        identity.params.update({"org_id": org_id, "keys": public_keys})
    if federation_id:
        signed = card.capabilities.extensions.add()
        signed.uri = SIGNED_MESSAGE_URI
        signed.description = (
            "Messages between members of the federation are signed (detached EdDSA JWS over "
            "RFC 8785 JSON, claims in metadata) and verified before anything acts on them."
        )
        signed.required = True
        signed.params.update({"federation_id": federation_id})
    return card


API_KEY_SCHEME = "apiKey"
MTLS_SCHEME = "mtls"


def _declare_security(card: a2a_pb2.AgentCard, mutual_tls: bool) -> None:
    """Local users and apps authenticate with an API key (HTTP bearer on JSON-RPC,
    `authorization` metadata on gRPC); under mutual TLS every caller also presents a
    client certificate. Members of a federation sign instead (the signed-message
    extension). Anonymous loopback callers, where allowed, need neither."""
    card.security_schemes[API_KEY_SCHEME].CopyFrom(
        a2a_pb2.SecurityScheme(
            http_auth_security_scheme=a2a_pb2.HTTPAuthSecurityScheme(
                scheme="bearer",
                bearer_format="csk_<id>_<secret>",
                description="An API key made with `consortium keys create`.",
            )
        )
    )
    required = {API_KEY_SCHEME: a2a_pb2.StringList()}
    if mutual_tls:
        card.security_schemes[MTLS_SCHEME].CopyFrom(
            a2a_pb2.SecurityScheme(
                mtls_security_scheme=a2a_pb2.MutualTlsSecurityScheme(
                    description="A client certificate from the federation's CA."
                )
            )
        )
        required[MTLS_SCHEME] = a2a_pb2.StringList()
    card.security_requirements.append(a2a_pb2.SecurityRequirement(schemes=required))


def card_json(card: a2a_pb2.AgentCard) -> str:
    """The card as the JSON document served at the well-known path."""
    return json.dumps(MessageToDict(card), indent=2) + "\n"
