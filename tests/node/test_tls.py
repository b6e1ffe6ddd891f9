"""TLS and mutual TLS on the gRPC endpoint, with certificates from `consortium init --tls`."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from a2a.types import a2a_pb2, a2a_pb2_grpc

from consortium.node.client import text_message
from consortium.node.setup import init_node
from consortium.trust.tls import channel_credentials, create_ca, issue_certificate
from tests.conftest import NodeStarter


def tls_section(directory: Path, *, mtls: bool) -> dict[str, object]:
    init_node("acme", directory, tls=True, mtls=mtls, grpc_port=0, http_port=0)
    return {
        "cert": str(directory / "tls" / "node.pem"),
        "key": str(directory / "tls" / "node.key"),
        "ca": str(directory / "tls" / "ca" / "ca.pem"),
        "client_auth": mtls,
    }


async def send(
    target: str, credentials: grpc.ChannelCredentials | None
) -> a2a_pb2.SendMessageResponse:
    channel = (
        grpc.aio.secure_channel(target, credentials)
        if credentials
        else grpc.aio.insecure_channel(target)
    )
    async with channel:
        stub = a2a_pb2_grpc.A2AServiceStub(channel)
        return await stub.SendMessage(
            a2a_pb2.SendMessageRequest(message=text_message("over tls")), timeout=10
        )


async def test_tls(start_node: NodeStarter, tmp_path: Path) -> None:
    tls = tls_section(tmp_path / "acme", mtls=False)
    node = await start_node(tls=tls)
    target = f"localhost:{node.endpoints.grpc_port}"
    ok = await send(target, channel_credentials(Path(str(tls["ca"]))))
    assert ok.task.status.state == a2a_pb2.TASK_STATE_COMPLETED
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await send(target, None)  # plaintext client against a TLS server
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    other_ca, _ = create_ca(tmp_path / "other-ca", "Some other CA")
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await send(target, channel_credentials(other_ca))  # server cert not trusted
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls(start_node: NodeStarter, tmp_path: Path) -> None:
    tls = tls_section(tmp_path / "acme", mtls=True)
    node = await start_node(tls=tls)
    target = f"localhost:{node.endpoints.grpc_port}"
    ca = Path(str(tls["ca"]))
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await send(target, channel_credentials(ca))  # no client certificate
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    ca_dir = ca.parent
    client = issue_certificate(ca, ca_dir / "ca.key", tmp_path / "client", "globex", ["localhost"])
    ok = await send(target, channel_credentials(ca, client.cert, client.key))
    assert ok.task.status.state == a2a_pb2.TASK_STATE_COMPLETED
    # A certificate from another CA is refused.
    other_ca, other_key = create_ca(tmp_path / "other-ca", "Some other CA")
    stranger = issue_certificate(
        other_ca, other_key, tmp_path / "stranger", "mallory", ["localhost"]
    )
    with pytest.raises(grpc.aio.AioRpcError):
        await send(target, channel_credentials(ca, stranger.cert, stranger.key))


def test_init_tls_writes_private_keys_0600(tmp_path: Path) -> None:
    tls_section(tmp_path / "acme", mtls=True)
    for key in (
        tmp_path / "acme" / "tls" / "node.key",
        tmp_path / "acme" / "tls" / "ca" / "ca.key",
    ):
        assert key.stat().st_mode & 0o777 == 0o600
    text = (tmp_path / "acme" / "node.toml").read_text()
    assert "[tls]" in text and "client_auth = true" in text
