"""The compose file's OTLP collector (deploy/container/otlp_receiver.py), run as the
container runs it: spans exported by the OpenTelemetry SDK's own OTLP/HTTP exporter
arrive as one line each (organization, name, ids, nothing else); what is not an OTLP
protobuf export to /v1/traces is refused."""

from __future__ import annotations

import gzip
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

RECEIVER = Path(__file__).resolve().parents[2] / "deploy" / "container" / "otlp_receiver.py"
PROTOBUF = {"Content-Type": "application/x-protobuf"}


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The receiver on a free loopback port: its base URL and its output file."""
    out = tmp_path / "spans" / "spans.jsonl"
    process = subprocess.Popen(
        [sys.executable, str(RECEIVER), "--host", "127.0.0.1", "--port", "0", "--out", str(out)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        ready = process.stdout.readline()
        assert ready.startswith("READY port="), ready
        yield f"http://127.0.0.1:{ready.split('=')[1].strip()}", out
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0


def export(url: str, org: str, compression: Compression) -> tuple[str, str]:
    """A parent and a child span of `org`, exported at once; their trace id and the
    parent's span id."""
    provider = TracerProvider(resource=Resource.create({"service.name": org}))
    exporter = OTLPSpanExporter(endpoint=url + "/v1/traces", compression=compression)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    with (
        tracer.start_as_current_span("task") as parent,
        tracer.start_as_current_span("escalate", attributes={"secret.body": "not kept"}),
    ):
        pass
    provider.shutdown()
    ctx = parent.get_span_context()
    return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"


def lines(out: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in out.read_text().splitlines()]


@pytest.mark.parametrize("compression", [Compression.NoCompression, Compression.Gzip])
def test_exported_spans_arrive_one_line_each(
    receiver: tuple[str, Path], compression: Compression
) -> None:
    url, out = receiver
    trace_id, parent_id = export(url, "acme", compression)
    spans = lines(out)
    assert [s["name"] for s in spans] == ["escalate", "task"]
    assert {s["service"] for s in spans} == {"acme"}
    assert {s["trace_id"] for s in spans} == {trace_id}
    assert spans[0]["parent_span_id"] == parent_id and spans[1]["span_id"] == parent_id
    assert "not kept" not in out.read_text()


def test_spans_of_several_organizations_accumulate(receiver: tuple[str, Path]) -> None:
    url, out = receiver
    export(url, "acme", Compression.NoCompression)
    export(url, "globex", Compression.NoCompression)
    assert [s["service"] for s in lines(out)] == ["acme", "acme", "globex", "globex"]


@pytest.mark.parametrize(
    ("path", "headers", "body", "status"),
    [
        ("/v1/metrics", PROTOBUF, b"\x00", 404),
        ("/v1/traces", {"Content-Type": "application/json"}, b"{}", 415),
        ("/v1/traces", PROTOBUF, b"\xff\xff\xff not protobuf", 400),
        ("/v1/traces", {**PROTOBUF, "Content-Encoding": "gzip"}, b"not gzip", 400),
    ],
)
def test_what_is_not_an_otlp_trace_export_is_refused(
    receiver: tuple[str, Path], path: str, headers: dict[str, str], body: bytes, status: int
) -> None:
    url, out = receiver
    assert httpx.post(url + path, headers=headers, content=body, timeout=10).status_code == status
    assert out.read_text() == ""


def test_a_gzip_of_garbage_is_refused(receiver: tuple[str, Path]) -> None:
    url, out = receiver
    headers = {**PROTOBUF, "Content-Encoding": "gzip"}
    body = gzip.compress(b"\xff\xff\xff not protobuf")
    assert httpx.post(url + "/v1/traces", headers=headers, content=body).status_code == 400
    assert out.read_text() == ""


def test_an_empty_export_is_accepted_and_writes_nothing(receiver: tuple[str, Path]) -> None:
    """An ExportTraceServiceRequest without spans serialises to no bytes at all."""
    url, out = receiver
    assert httpx.post(url + "/v1/traces", headers=PROTOBUF, content=b"").status_code == 200
    assert out.read_text() == ""


@pytest.mark.parametrize("length", [str(16 * 1024 * 1024 + 1), "-5", "many"])
def test_a_declared_length_over_16_mib_or_not_a_length_is_refused(
    receiver: tuple[str, Path], length: str
) -> None:
    """Refused from the headers, before any body is read (so none is sent)."""
    url, out = receiver
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(
            b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
            + f"Content-Length: {length}\r\n\r\n".encode()
        )
        status = conn.makefile("rb").readline()
    assert status.split()[1] == b"400", status
    assert out.read_text() == ""
