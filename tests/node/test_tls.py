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


def san_names(cert: Path) -> set[str]:
    from cryptography import x509

    loaded = x509.load_pem_x509_certificate(cert.read_bytes())
    san = loaded.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(v) for v in san.get_values_for_type(x509.IPAddress)} | set(
        san.get_values_for_type(x509.DNSName)
    )


def test_the_certificate_names_the_public_host(tmp_path: Path) -> None:
    """A node in a network namespace listens on one address and is reached at another
    (its bridge address, through its link proxy): both are in the SANs, with localhost
    and 127.0.0.1; a wildcard listening address is not."""
    init_node("acme", tmp_path / "a", tls=True, host="10.254.0.1", public_host="10.231.0.2")
    assert san_names(tmp_path / "a" / "tls" / "node.pem") == {
        "10.254.0.1",
        "10.231.0.2",
        "127.0.0.1",
        "localhost",
    }
    text = (tmp_path / "a" / "node.toml").read_text()
    assert 'public_host = "10.231.0.2"' in text
    assert "10.231.0.2:50051" in (tmp_path / "a" / "agent-card.json").read_text()
    init_node("acme", tmp_path / "b", tls=True, host="0.0.0.0", public_host="node.example")
    assert san_names(tmp_path / "b" / "tls" / "node.pem") == {
        "node.example",
        "127.0.0.1",
        "localhost",
    }


async def test_a_peer_reaching_the_node_at_its_public_address_verifies_it(
    start_node: NodeStarter, tmp_path: Path
) -> None:
    """The node listens on 127.0.0.1 and is reached at 127.0.0.2 through a proxy (as a
    namespaced node behind its link proxy): the TLS handshake verifies the name the
    caller dialled, so only a certificate that names 127.0.0.2 is accepted."""
    from consortium.launch.faultproxy import FaultProxy

    named = tmp_path / "named"
    init_node("acme", named, tls=True, public_host="127.0.0.2", grpc_port=0, http_port=0)
    unnamed = tmp_path / "unnamed"
    init_node("acme", unnamed, tls=True, grpc_port=0, http_port=0)
    for directory, accepted in ((named, True), (unnamed, False)):
        tls = {
            "cert": str(directory / "tls" / "node.pem"),
            "key": str(directory / "tls" / "node.key"),
            "ca": str(directory / "tls" / "ca" / "ca.pem"),
            "client_auth": False,
        }
        node = await start_node(tls=tls)
        async with FaultProxy(f"127.0.0.1:{node.endpoints.grpc_port}", host="127.0.0.2") as proxy:
            credentials = channel_credentials(Path(str(tls["ca"])))
            if accepted:
                ok = await send(proxy.address, credentials)
                assert ok.task.status.state == a2a_pb2.TASK_STATE_COMPLETED
            else:
                with pytest.raises(grpc.aio.AioRpcError) as e:
                    await send(proxy.address, credentials)
                assert e.value.code() == grpc.StatusCode.UNAVAILABLE
