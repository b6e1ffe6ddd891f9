"""What a node knows about its storage: the faults of the databases in its data directory
(`consortium.sqlite.STORAGE`) as /healthz reports them, the gate that refuses new tasks
at once while they stand, a probe that finds out when a full or read-only disk takes
writes again although nobody writes (a load balancer that sees 503 sends no traffic),
and a log filter that keeps a storage fault to the one line per interval
`consortium.sqlite` writes.

a2a-sdk and asyncio log every request that fails with a traceback at ERROR (the
consumer of a task's events, the JSON-RPC stream, a task's exception never retrieved):
thousands of lines for one full disk; OpenTelemetry's file exporters log each batch of
spans they could not write. `quiet_storage_tracebacks` drops exactly the records whose
exception is a storage fault (the exporters' go to the rate-limited log of
`consortium.sqlite`); every other record passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from consortium.errors import StorageUnavailable
from consortium.node.a2a.errors import StorageUnavailableError
from consortium.sqlite import STORAGE, Fault, probe, storage_problem
from consortium.storage.storage import Storage

# OpenTelemetry's file exporters log every batch they fail to write, with a traceback.
TELEMETRY_FILE_LOGGER = "opentelemetry.exporter.otlp.json.file"
TELEMETRY_FILE_LOGGERS = tuple(
    f"{TELEMETRY_FILE_LOGGER}.{name}"
    for name in ("_internal", "trace_exporter", "metric_exporter", "_log_exporter")
)
TELEMETRY_FILES = "the trace and metric files"
# The loggers that report a request's failure with its traceback.
NOISY_LOGGERS = (
    "a2a.server.agent_execution.active_task",
    "a2a.server.agent_execution.active_task_registry",
    "a2a.server.request_handlers.default_request_handler_v2",
    "a2a.server.routes.jsonrpc_dispatcher",
    "asyncio",
    *TELEMETRY_FILE_LOGGERS,
)
PROBE_INTERVAL_S = 2.0


def is_storage_fault(error: BaseException | None) -> bool:
    """Whether `error`, or an exception it was raised from or during, is a storage fault."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, StorageUnavailable | StorageUnavailableError):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


class _StorageFaultFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is None:
            return True
        if record.name.startswith(TELEMETRY_FILE_LOGGER):
            # The trace or metric file could not be written: one line per interval too.
            problem = storage_problem(error)
            if problem is not None:
                STORAGE.record(TELEMETRY_FILES, problem)
                return False
        return not is_storage_fault(error)


_FILTER = _StorageFaultFilter()


def quiet_storage_tracebacks() -> None:
    """Installs the filter on NOISY_LOGGERS (once; idempotent)."""
    for name in NOISY_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


class StorageHealth:
    """The storage state of one node: its data directory's faults, each faulted database
    probed at most every PROBE_INTERVAL_S. While a fault stands, the node refuses new
    tasks at once (`require_writable`) rather than run a model for an answer it could
    not store; the probe lets them in again once the disk takes writes."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._probed_at = 0.0
        # A database server the node's state lives on ([storage] url = postgresql://...):
        # its name in STORAGE and a probe that takes a write.
        self._server: tuple[str, Callable[[], object]] | None = None
        self._directories = [data_dir]

    def watch(self, storage: Storage) -> None:
        """Also reports (and, being remote, probes even without a fault: a database that
        went away while nothing wrote still makes the node not ready) `storage`."""
        if storage.kind == "postgresql":
            self._server = (storage.location.shown, storage.probe)
        elif storage.location.directory is not None:
            self._directories.append(storage.location.directory)

    def _standing(self) -> list[Fault]:
        faults = [f for d in self._directories for f in STORAGE.under(d)]
        if self._server is not None:
            fault = STORAGE.get(self._server[0])
            if fault is not None:
                faults.append(fault)
        return sorted({f.database: f for f in faults}.values(), key=lambda f: f.since)

    async def faults(self) -> list[Fault]:
        """The faults that stand (probing first, when due, so that a disk freed while
        nothing wrote reads healthy again)."""
        faults = self._standing()
        now = time.monotonic()
        if (faults or self._server is not None) and now - self._probed_at >= PROBE_INTERVAL_S:
            self._probed_at = now
            for fault in faults:
                if self._server is None or fault.database != self._server[0]:
                    await asyncio.to_thread(probe, fault.database)
            if self._server is not None:
                with contextlib.suppress(StorageUnavailable):
                    await asyncio.to_thread(self._server[1])
            faults = self._standing()
        return faults

    async def require_writable(self) -> None:
        """Raises StorageUnavailable while a database of the node cannot be written."""
        faults = await self.faults()
        if faults:
            raise StorageUnavailable(faults[0].problem)

    async def check(self) -> dict[str, Any] | None:
        """None when every database takes writes; else what /healthz reports."""
        faults = await self.faults()
        if not faults:
            return None
        first = faults[0]
        return {
            "problem": first.problem,
            "message": str(StorageUnavailable(first.problem)),
            "since": round(first.since, 3),
            "databases": {
                (f.database if "://" in f.database else Path(f.database).name): {
                    "problem": f.problem,
                    "failed_writes": f.failures,
                }
                for f in faults
            },
        }
