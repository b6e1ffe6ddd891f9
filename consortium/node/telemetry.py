"""OpenTelemetry for one node: its own TracerProvider (resource: service.name = org id,
plus the federation id), exporting OTLP JSON lines to a file by default, or OTLP to a
collector; and its MeterProvider (peers' reputations, the model's load), exporting OTLP
JSON lines to a file next to the traces. Providers are per node, not global, so several
nodes can share a process.

`LoadMetrics` turns the model's load (llm/load.py: a LoadObserver's events and the
worker's ModelLoad snapshot) into metrics under the meter "consortium.model":
- histograms: `consortium.model.queue.time` (s a request waited for a slot, by caller
  kind), `consortium.model.batch.size` (sequences one decode step advanced);
- counters: `consortium.model.refusals` (by reason: queue_full, queue_timeout),
  `consortium.model.prefix.lookups`, `consortium.model.prefix.hits`,
  `consortium.model.prefix.reused_tokens`;
- observable gauges: `consortium.model.queue.length`, `consortium.model.slots.busy`,
  `consortium.model.slots`.
Callers are named by kind only (key, member, anonymous, node), never by id: an
attribute per API key would grow without bound.

Spans carry identifiers only (task, message, organizations, key ids), never message
text: an auditor joins them with the signed messages by message id.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from opentelemetry import metrics
from opentelemetry.context import Context
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from consortium.errors import ConfigError
from consortium.llm.load import ModelLoad

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


LOAD_METER = "consortium.model"


def caller_kind(lane: str) -> str:
    """The kind of caller a queue lane (a caller's owner, node/auth.py) names."""
    if lane.startswith("key:"):
        return "key"
    if lane.startswith("org:"):
        return "member"
    return "anonymous" if lane == "anonymous" else "node"


class LoadMetrics:
    """The model's load as OpenTelemetry metrics (see the module docstring): a
    LoadObserver for llm/worker.ModelWorker. Built before the node's MeterProvider
    exists (the worker is made first); events before `bind` are not recorded."""

    def __init__(self) -> None:
        self._bound = False

    def bind(self, provider: metrics.MeterProvider, load: Callable[[], ModelLoad]) -> None:
        """Records to `provider` from now on; the gauges read `load()` when collected."""
        meter = provider.get_meter(LOAD_METER)
        self._queue_time = meter.create_histogram(
            "consortium.model.queue.time", unit="s", description="time a request waited for a slot"
        )
        self._batch = meter.create_histogram(
            "consortium.model.batch.size",
            unit="{sequence}",
            description="sequences advanced by one decode step",
        )
        self._refusals = meter.create_counter(
            "consortium.model.refusals",
            unit="{request}",
            description="requests the model's queue refused (full, or waited too long)",
        )
        self._lookups = meter.create_counter(
            "consortium.model.prefix.lookups", unit="{prompt}", description="prompts prefilled"
        )
        self._hits = meter.create_counter(
            "consortium.model.prefix.hits",
            unit="{prompt}",
            description="prompts that reused a cached prefix",
        )
        self._reused = meter.create_counter(
            "consortium.model.prefix.reused_tokens",
            unit="{token}",
            description="prompt tokens not computed again",
        )

        def gauge(field: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
            def observe(_: CallbackOptions) -> Iterable[Observation]:
                return [Observation(getattr(load(), field))]

            return observe

        meter.create_observable_gauge(
            "consortium.model.queue.length",
            [gauge("queued")],
            unit="{request}",
            description="requests waiting for a slot",
        )
        meter.create_observable_gauge(
            "consortium.model.slots.busy",
            [gauge("slots_busy")],
            unit="{slot}",
            description="slots serving a request",
        )
        meter.create_observable_gauge(
            "consortium.model.slots", [gauge("slots")], unit="{slot}", description="slots"
        )
        self._bound = True

    def queue_wait(self, seconds: float, lane: str) -> None:
        if self._bound:
            self._queue_time.record(seconds, {"consortium.caller.kind": caller_kind(lane)})

    def refused(self, reason: str) -> None:
        if self._bound:
            self._refusals.add(1, {"consortium.refusal.reason": reason})

    def step(self, sequences: int, tokens: int) -> None:
        if self._bound:
            self._batch.record(sequences)

    def prefix(self, reused: int, prompt: int) -> None:
        if self._bound:
            self._lookups.add(1)
            if reused:
                self._hits.add(1)
                self._reused.add(reused)
