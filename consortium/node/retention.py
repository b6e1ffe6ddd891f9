"""What a node forgets of its own records, and when: the bodies of old audit-log entries
(`[audit] retention_days`, `max_entries`: their leaf hashes stay, so the log still
verifies: trust.audit.log) and old redaction receipts (`[redaction] receipts_days`).
One pass when the node starts, then one every `interval_s`; each step runs in a thread,
and a failed step is logged by its type and tried again at the next pass.
(Finished tasks have their own hourly pass, `[server] task_retention_days`.)"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from consortium.node.periodic import every
from consortium.redaction.receipts import DisclosureStore
from consortium.trust.audit.log import SqliteAuditLog

log = logging.getLogger(__name__)

DAY_S = 86_400.0
# Entries pruned per transaction: the log's lock (appends wait) is held meanwhile.
AUDIT_BATCH = 10_000


@dataclass(frozen=True)
class Step:
    what: str
    prune: Callable[[], int]  # how many records it forgot


def audit_step(
    audit: SqliteAuditLog,
    days: float,
    max_entries: int,
    clock: Callable[[], float] = time.time,
) -> Step | None:
    """Prunes the bodies of audit entries older than `days` and beyond the newest
    `max_entries` (0: no bound of that kind), in batches; None when neither is set."""
    if days <= 0 and max_entries <= 0:
        return None

    def prune() -> int:
        # Bounds fixed for the pass: each batch's own entry must not move them.
        older_than = clock() - days * DAY_S if days > 0 else None
        below = audit.size - max_entries if max_entries > 0 else None
        total = 0
        while n := audit.prune(older_than=older_than, below=below, limit=AUDIT_BATCH):
            total += n
        return total

    return Step("audit entry bodies", prune)


def receipts_step(
    store: DisclosureStore, days: float, clock: Callable[[], float] = time.time
) -> Step | None:
    """Deletes redaction receipts older than `days`; None when 0 (kept)."""
    if days <= 0:
        return None
    return Step("redaction receipts", lambda: store.prune(clock() - days * DAY_S))


async def prune_all(steps: list[Step]) -> None:
    for step in steps:
        try:
            n = await asyncio.to_thread(step.prune)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # retention must never end the node
            log.error("retention of %s failed: %s", step.what, type(e).__name__)
            continue
        if n:
            log.info("retention: forgot %d %s", n, step.what)


async def run_retention(steps: list[Step], interval_s: float) -> None:
    """`prune_all` now, then every `interval_s`, until cancelled."""
    if not steps:
        return
    await prune_all(steps)
    await every(interval_s, lambda: prune_all(steps), "retention")
