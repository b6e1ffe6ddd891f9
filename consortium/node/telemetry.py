"""OpenTelemetry for one node: its own TracerProvider (resource: service.name = org id,
plus the federation id), exporting OTLP JSON lines to a file by default, or OTLP to a
collector. Providers are per node, not global, so several nodes can share a process.

Spans carry identifiers only (task, message, organizations, key ids), never message
text: an auditor joins them with the signed messages by message id.
"""

from __future__ import annotations

from pathlib import Path

from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from consortium.errors import ConfigError

TRACER_NAME = "consortium"
PROPAGATOR = TraceContextTextMapPropagator()


def make_exporter(kind: str, *, path: Path, endpoint: str) -> SpanExporter | None:
    if kind == "none":
        return None
    if kind == "file":
        from opentelemetry.exporter.otlp.json.file import FileSpanExporter

        path.parent.mkdir(parents=True, exist_ok=True)
        return FileSpanExporter(path)
    if kind in ("otlp-grpc", "otlp-http"):
        if not endpoint:
            raise ConfigError(f"exporter {kind} needs telemetry.endpoint", key="telemetry.endpoint")
        try:
            if kind == "otlp-grpc":
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
            else:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[assignment]
                    OTLPSpanExporter,
                )
        except ImportError:
            raise ConfigError(
                f"exporter {kind} needs the package opentelemetry-exporter-otlp",
                key="telemetry.exporter",
            ) from None
        exporter: SpanExporter = OTLPSpanExporter(endpoint=endpoint)
        return exporter
    raise ConfigError(f"unknown exporter {kind!r}", key="telemetry.exporter")


def make_provider(org_id: str, federation_id: str, exporter: SpanExporter | None) -> TracerProvider:
    attributes = {"service.name": org_id, "service.namespace": "consortium"}
    if federation_id:
        attributes["consortium.federation.id"] = federation_id
    provider = TracerProvider(resource=Resource.create(attributes))
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=500))
    return provider


def traceparent() -> str:
    """The W3C traceparent of the current span ('' outside a span)."""
    carrier: dict[str, str] = {}
    PROPAGATOR.inject(carrier)
    return carrier.get("traceparent", "")


def context_from(traceparent_value: str) -> Context | None:
    if not traceparent_value:
        return None
    return PROPAGATOR.extract({"traceparent": traceparent_value})
