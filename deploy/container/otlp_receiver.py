"""A minimal OTLP/HTTP trace receiver: the collector of deploy/container/compose.yaml.

No collector image can be pulled here (no container registry), and Debian packages no
OpenTelemetry Collector; this one needs only what the node's image already holds
(`opentelemetry-proto`, from the OTLP exporters). It accepts `POST /v1/traces` with an
`ExportTraceServiceRequest` in protobuf (optionally gzip-compressed), as the node's
`[telemetry] exporter = "otlp-http"` sends it, and appends one JSON line per span to
--out: the organization (`service.name`), the span's name, trace, span and parent ids.
Nothing else of a span (its attributes, events) is kept.

    python3 otlp_receiver.py --port 4318 --out /spans/spans.jsonl

Prints `READY port=N` once listening (port 0 picks a free one); stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import gzip
import json
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

MAX_BODY_BYTES = 16 * 1024 * 1024


def span_lines(request: ExportTraceServiceRequest) -> list[dict[str, Any]]:
    """One record per span: its organization, name and ids (hex)."""
    lines = []
    for resource_spans in request.resource_spans:
        service = next(
            (
                a.value.string_value
                for a in resource_spans.resource.attributes
                if a.key == "service.name"
            ),
            "",
        )
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                lines.append(
                    {
                        "service": service,
                        "name": span.name,
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent_span_id": span.parent_span_id.hex(),
                    }
                )
    return lines


class Receiver(BaseHTTPRequestHandler):
    out: Path
    lock = threading.Lock()

    def do_POST(self) -> None:
        if self.path != "/v1/traces":
            self.send_error(404, "only /v1/traces is received here")
            return
        if self.headers.get("Content-Type", "") != "application/x-protobuf":
            self.send_error(415, "send OTLP protobuf (application/x-protobuf)")
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY_BYTES:
            self.send_error(400, "a body of at most 16 MiB is expected")
            return
        body = self.rfile.read(length)
        try:
            if self.headers.get("Content-Encoding", "") == "gzip":
                body = gzip.decompress(body)
            request = ExportTraceServiceRequest.FromString(body)
        except (OSError, EOFError, DecodeError):
            self.send_error(400, "not an ExportTraceServiceRequest")
            return
        lines = span_lines(request)
        with self.lock, self.out.open("a") as f:
            for line in lines:
                f.write(json.dumps(line) + "\n")
        reply = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per export would drown the container's log


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=4318)
    parser.add_argument("--out", type=Path, required=True, help="JSON lines, one per span")
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.touch()
    Receiver.out = args.out
    server = ThreadingHTTPServer((args.host, args.port), Receiver)

    def stop(signum: int, frame: object) -> None:
        threading.Thread(target=server.shutdown).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"READY port={server.server_address[1]}", flush=True)
    server.serve_forever()
    server.server_close()
    sys.exit(0)


if __name__ == "__main__":
    main()
