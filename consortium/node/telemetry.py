"""OpenTelemetry for one node: its own TracerProvider (resource: service.name = org id,
plus the federation id), exporting OTLP JSON lines to a file by default, or OTLP to a
collector; and its MeterProvider (peers' reputations), exporting OTLP JSON lines to a
file next to the traces. Providers are per node, not global, so several nodes can share
a process.

Spans carry identifiers only (task, message, organizations, key ids), never message
text: an auditor joins them with the signed messages by message id.
"""

from __future__ import annotations

from pathlib import Path

from opentelemetry.context import Context
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
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


def _resource(org_id: str, federation_id: str) -> Resource:
    attributes = {"service.name": org_id, "service.namespace": "consortium"}
    if federation_id:
        attributes["consortium.federation.id"] = federation_id
    return Resource.create(attributes)


def make_provider(org_id: str, federation_id: str, exporter: SpanExporter | None) -> TracerProvider:
    provider = TracerProvider(resource=_resource(org_id, federation_id))
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=500))
    return provider


def make_meter_provider(
    org_id: str, federation_id: str, path: Path | None, *, interval_s: float = 60.0
) -> MeterProvider:
    """A MeterProvider exporting OTLP JSON lines to `path` every `interval_s` (and on
    shutdown), e.g. DATA_DIR/metrics.jsonl next to traces.jsonl; no exporter with None.
    The caller shuts it down on stop (`provider.shutdown()`), which exports once more."""
    readers = []
    if path is not None:
        from opentelemetry.exporter.otlp.json.file import FileMetricExporter

        path.parent.mkdir(parents=True, exist_ok=True)
        readers.append(
            PeriodicExportingMetricReader(
                FileMetricExporter(path), export_interval_millis=interval_s * 1000
            )
        )
    return MeterProvider(metric_readers=readers, resource=_resource(org_id, federation_id))


def traceparent() -> str:
    """The W3C traceparent of the current span ('' outside a span)."""
    carrier: dict[str, str] = {}
    PROPAGATOR.inject(carrier)
    return carrier.get("traceparent", "")


def context_from(traceparent_value: str) -> Context | None:
    if not traceparent_value:
        return None
    return PROPAGATOR.extract({"traceparent": traceparent_value})
