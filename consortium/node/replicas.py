"""The replicas of one organization's node on a shared PostgreSQL database: who is
alive, and failing the tasks of one that died (store "replicas", PostgreSQL only; a node
on SQLite is one process and has no replicas).

Each replica has a random id for the life of its process (`new_replica_id`, what the
task store records with every task it runs). It registers before it serves any call and
then, every `[storage] heartbeat_s`, records that it is alive (`Replicas.beat`: its row's
`last_seen` set to the database's clock, so replicas on several machines need no
synchronised clocks) and looks for replicas not seen for `[storage] failover_after_s`
(`Replicas.sweep`). A silent replica is declared dead by one survivor only: the sweep
takes the dead rows `FOR UPDATE SKIP LOCKED`, so another survivor sweeping at the same
moment skips them; while it holds the row it fails that replica's unfinished tasks ("the
replica running this task stopped") and deletes the row. Failing is idempotent, so a
survivor that dies half-way leaves the row to the next sweep.

A replica sweeps only after it has reached the database without a fault for a whole
`failover_after_s` (`_healthy_since`): when PostgreSQL was down or unreachable every
replica's heartbeat stopped, and the first to reconnect would otherwise declare every
other dead. A replica that stops cleanly fails its own unfinished tasks (the task
store's `fail_unfinished`) and leaves (`Replicas.leave`); one that restarts comes back
under a new id and touches no other replica's tasks. A replica declared dead while it was
in fact alive (paused longer than the bound) learns it at its next beat, says so in the
log, and registers again; its tasks stay failed (a terminal task stays terminal).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Column,
    DateTime,
    Interval,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    bindparam,
    delete,
    func,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB

from consortium.errors import StorageUnavailable
from consortium.node.store import NodeTaskStore
from consortium.storage.database import Database
from consortium.storage.sql import insert

log = logging.getLogger(__name__)

DEAD_REASON = "the replica running this task stopped"

METADATA = MetaData()
REPLICAS = Table(
    "replicas",
    METADATA,
    Column("replica", Text, nullable=False),
    Column("org", Text, nullable=False),
    Column("endpoints", JSONB, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("last_seen", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("replica"),
)


def new_replica_id() -> str:
    """This process's id among the replicas: its host and pid (for operators) and a
    random part (a pid is reused; two machines may share a host name)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


@dataclass(frozen=True)
class Replica:
    """A registered replica as the table holds it. `endpoints["interfaces"]`: its agent
    card's interfaces, [protocol binding, URL] pairs."""

    replica: str
    org: str
    endpoints: dict[str, Any]
    started_at: datetime
    last_seen: datetime


class Replicas:
    """This replica (`replica` of `org`) in `db` (the "replicas" store), failing the
    tasks of dead replicas in `tasks`. `endpoints`: what it serves (`{"interfaces":
    [[binding, url], ...]}`: its agent card's), set once known."""

    def __init__(
        self,
        db: Database,
        tasks: NodeTaskStore,
        *,
        replica: str,
        org: str,
        failover_after_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if db.dialect != "postgresql":
            raise ValueError("replicas are kept on PostgreSQL only")
        self._db = db
        self._tasks = tasks
        self.replica = replica
        self.org = org
        self.failover_after_s = failover_after_s
        self.endpoints: dict[str, Any] = {}
        self._clock = clock
        self._registered = False
        self._healthy_since: float | None = None
        # The other live replicas as of the last heartbeat (the agent card lists their
        # interfaces after this replica's own).
        self.others: list[Replica] = []
        self.beats = 0  # heartbeats recorded
        self.declared_dead = 0  # how many replicas this one declared dead
        self.reregistered = 0  # how often this one found itself declared dead

    def beat(self) -> None:
        """Records that this replica is alive now (registers it the first time)."""
        try:
            with self._db.begin() as conn:
                seen = conn.execute(
                    update(REPLICAS)
                    .where(REPLICAS.c.replica == self.replica)
                    .values(last_seen=func.now(), endpoints=self.endpoints)
                    .returning(REPLICAS.c.replica)
                ).first()
                if seen is None:
                    stmt = insert(self._db, REPLICAS).values(
                        replica=self.replica,
                        org=self.org,
                        endpoints=self.endpoints,
                        started_at=func.now(),
                        last_seen=func.now(),
                    )
                    conn.execute(stmt.on_conflict_do_nothing())
        except StorageUnavailable:
            self._healthy_since = None
            raise
        self.beats += 1
        if self._healthy_since is None:
            self._healthy_since = self._clock()
        if seen is None and self._registered:
            self.reregistered += 1
            log.error(
                "replica %s was declared dead by another (not seen for %g s): the tasks it "
                "was running were failed; registered again",
                self.replica,
                self.failover_after_s,
            )
        self._registered = True

    def sweep(self) -> list[str]:
        """Declares dead the replicas of this organization not seen for failover_after_s
        and fails their unfinished tasks; returns their ids. Does nothing until this
        replica has itself been beating for failover_after_s (see the module docstring)."""
        if (
            self._healthy_since is None
            or self._clock() - self._healthy_since < self.failover_after_s
        ):
            return []
        bound = bindparam("bound", timedelta(seconds=self.failover_after_s), type_=Interval)
        stale = (
            select(REPLICAS.c.replica)
            .where(
                REPLICAS.c.org == self.org,
                REPLICAS.c.replica != self.replica,
                REPLICAS.c.last_seen < func.now() - bound,
            )
            .order_by(REPLICAS.c.replica)
            # One survivor declares each: the others skip the rows it holds.
            .with_for_update(skip_locked=True)
        )
        dead: list[str] = []
        with self._db.begin() as conn:
            for (replica,) in conn.execute(stale).all():
                failed = self._tasks.fail_replicas(DEAD_REASON, [replica])
                conn.execute(delete(REPLICAS).where(REPLICAS.c.replica == replica))
                log.warning(
                    "replica %s declared dead (not seen for %g s): %d task(s) it was running "
                    "marked failed",
                    replica,
                    self.failover_after_s,
                    failed,
                )
                dead.append(replica)
        self.declared_dead += len(dead)
        return dead

    def live(self) -> list[Replica]:
        """The registered replicas of this organization (this one included) seen within
        failover_after_s, oldest first."""
        bound = bindparam("bound", timedelta(seconds=self.failover_after_s), type_=Interval)
        query = (
            select(REPLICAS)
            .where(REPLICAS.c.org == self.org, REPLICAS.c.last_seen >= func.now() - bound)
            .order_by(REPLICAS.c.started_at, REPLICAS.c.replica)
        )
        with self._db.connect() as conn:
            return [Replica(**row._mapping) for row in conn.execute(query)]

    def leave(self) -> None:
        """Removes this replica's row (a clean stop, once its own tasks are failed)."""
        with self._db.begin() as conn:
            conn.execute(delete(REPLICAS).where(REPLICAS.c.replica == self.replica))
        self._registered = False

    async def run(self, heartbeat_s: float) -> None:
        """Beats and sweeps every heartbeat_s until cancelled; a database that cannot be
        reached is logged where it was met (consortium.sqlite.STORAGE) and tried again."""
        while True:
            try:
                await self._db.run(self.beat)
                await self._db.run(self.sweep)
                live = await self._db.run(self.live)
                self.others = [r for r in live if r.replica != self.replica]
            except StorageUnavailable:
                self._healthy_since = None
            except Exception:  # a bug: logged, and the heartbeat goes on
                self._healthy_since = None
                log.exception("replica %s: heartbeat failed", self.replica)
            await asyncio.sleep(heartbeat_s)
