"""The A2A gRPC binding: `lf.a2a.v1.A2AService` on grpc.aio over a2a-sdk's servicer.

The service is registered with raw-bytes deserialisers so that a malformed request gets
INVALID_ARGUMENT rather than the generic INTERNAL of a failed deserialisation, and an
A2A-Version the node does not speak is refused before the method runs. Errors map to the
status codes of the A2A v1.0 specification; messages over the size limit get
RESOURCE_EXHAUSTED from grpc itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from a2a.server.request_handlers import GrpcHandler, RequestHandler
from a2a.types import a2a_pb2
from a2a.utils.constants import VERSION_HEADER
from a2a.utils.errors import (
    A2A_ERROR_REASONS,
    A2AError,
    PushNotificationNotSupportedError,
    UnsupportedOperationError,
    VersionNotSupportedError,
)
from a2a.utils.grpc_status import status_to_grpc
from google.protobuf import duration_pb2, message_factory
from google.protobuf import message as pb_message
from google.rpc import error_details_pb2, status_pb2
from grpc_reflection.v1alpha import reflection

from consortium.node.a2a.errors import (
    PermissionDeniedError,
    RateLimitedError,
    ResourceExhaustedError,
    StorageUnavailableError,
    UnauthenticatedError,
)
from consortium.node.auth import GrpcContextBuilder

A2A_SERVICE = a2a_pb2.DESCRIPTOR.services_by_name["A2AService"]

# The A2A v1.0 specification (section 5.4) maps these to UNIMPLEMENTED; a2a-sdk 1.3.0
# sends FAILED_PRECONDITION. The rest of the SDK's mapping agrees with the spec.
SPEC_GRPC_CODES: dict[type[A2AError], grpc.StatusCode] = {
    PushNotificationNotSupportedError: grpc.StatusCode.UNIMPLEMENTED,
    UnsupportedOperationError: grpc.StatusCode.UNIMPLEMENTED,
    VersionNotSupportedError: grpc.StatusCode.UNIMPLEMENTED,
    UnauthenticatedError: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDeniedError: grpc.StatusCode.PERMISSION_DENIED,
    RateLimitedError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ResourceExhaustedError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    StorageUnavailableError: grpc.StatusCode.UNAVAILABLE,
}
SUPPORTED_MAJOR_MINOR = (1, 0)


class SpecGrpcHandler(GrpcHandler):
    """a2a-sdk's gRPC servicer with the specification's status codes; Consortium's own
    errors carry their ErrorInfo metadata (a refusal's reason, a limit) as the JSON-RPC
    binding's do, and a caller over its limits a RetryInfo too."""

    async def abort_context(self, error: A2AError, context: grpc.aio.ServicerContext) -> None:
        code = SPEC_GRPC_CODES.get(type(error))
        if code is None:
            await super().abort_context(error, context)
            return
        status = status_pb2.Status(code=code.value[0], message=error.message)
        detail = status.details.add()
        data = error.data if isinstance(error.data, dict) else {}
        detail.Pack(
            error_details_pb2.ErrorInfo(
                reason=A2A_ERROR_REASONS.get(type(error), "UNKNOWN_ERROR"),
                domain="a2a-protocol.org",
                metadata={str(k): str(v) for k, v in data.items()},
            )
        )
        retry = data.get("retryAfterSeconds")
        if isinstance(retry, str) and retry.isdigit():
            status.details.add().Pack(
                error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=int(retry)))
            )
        grpc_error = status_to_grpc(status)
        context.set_trailing_metadata(tuple(grpc_error.trailing_metadata))
        await context.abort(grpc_error.code, grpc_error.details)


def version_supported(value: str) -> bool:
    parts = value.strip().split(".")
    try:
        major = int(parts[0])
        minor = int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        return False
    return (major, minor) == SUPPORTED_MAJOR_MINOR


async def _check_version(servicer: SpecGrpcHandler, ctx: grpc.aio.ServicerContext) -> None:
    for key, value in ctx.invocation_metadata() or ():
        if key.lower() == VERSION_HEADER.lower():
            text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
            if not version_supported(text):
                await servicer.abort_context(
                    VersionNotSupportedError(
                        f"A2A version {text!r} is not supported; this node speaks 1.0"
                    ),
                    ctx,
                )


def a2a_generic_handler(servicer: SpecGrpcHandler) -> grpc.GenericRpcHandler:
    """Registers every A2AService method of `servicer`, parsing requests ourselves and
    refusing an A2A-Version the node does not speak (no header: the current version)."""
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in A2A_SERVICE.methods:
        req_cls = message_factory.GetMessageClass(method.input_type)
        resp_cls = message_factory.GetMessageClass(method.output_type)
        impl = getattr(servicer, method.name)
        if method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                _streaming(servicer, impl, req_cls), response_serializer=resp_cls.SerializeToString
            )
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _unary(servicer, impl, req_cls), response_serializer=resp_cls.SerializeToString
            )
    return grpc.method_handlers_generic_handler(A2A_SERVICE.full_name, handlers)


async def _parse(raw: bytes, cls: type[pb_message.Message], ctx: grpc.aio.ServicerContext) -> Any:
    try:
        return cls.FromString(raw)
    except pb_message.DecodeError as e:
        await ctx.abort(
            grpc.StatusCode.INVALID_ARGUMENT, f"malformed {cls.DESCRIPTOR.full_name}: {e}"
        )


def _unary(
    servicer: SpecGrpcHandler,
    impl: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]],
    cls: type[pb_message.Message],
) -> Callable[[bytes, grpc.aio.ServicerContext], Awaitable[Any]]:
    async def handle(raw: bytes, ctx: grpc.aio.ServicerContext) -> Any:
        await _check_version(servicer, ctx)
        return await impl(await _parse(raw, cls, ctx), ctx)

    return handle


def _streaming(
    servicer: SpecGrpcHandler,
    impl: Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]],
    cls: type[pb_message.Message],
) -> Callable[[bytes, grpc.aio.ServicerContext], AsyncIterator[Any]]:
    async def handle(raw: bytes, ctx: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await _check_version(servicer, ctx)
        request = await _parse(raw, cls, ctx)
        async for item in impl(request, ctx):
            yield item

    return handle


def grpc_server(
    address: str, max_message_bytes: int, credentials: grpc.ServerCredentials | None
) -> tuple[grpc.aio.Server, int]:
    """A gRPC server bound to `address` (TLS with `credentials`), not yet serving; and the
    port it bound."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max(max_message_bytes, 4 * 1024 * 1024)),
            ("grpc.so_reuseport", 0),
            # Peers' keepalive pings (node/peers.py: every 20 s while a call is open) are
            # welcome, even during a long generation that sends no data.
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ]
    )
    if credentials is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)
    if port == 0:
        raise OSError(f"cannot bind gRPC port {address}")
    return server, port


def serve_a2a(server: grpc.aio.Server, handler: RequestHandler) -> None:
    """Registers the A2A service over `handler` (with server reflection) on `server`."""
    server.add_generic_rpc_handlers(
        (a2a_generic_handler(SpecGrpcHandler(handler, GrpcContextBuilder())),)
    )
    reflection.enable_server_reflection((A2A_SERVICE.full_name, reflection.SERVICE_NAME), server)
