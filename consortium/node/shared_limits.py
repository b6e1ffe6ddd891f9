"""Per-caller limits shared by every replica of a node on PostgreSQL: the same rules as
`CallerLimits` (node/limits.py: requests per minute, tokens per minute, requests in
progress), with the windows in the database (store "limits", schema consortium_limits),
so N replicas grant one caller its limit once, not N times.

- A call is a row of `limit_requests` (owner, time); a task's tokens a row of
  `limit_tokens` (reserved at admission, set to what it used when it settles); a request
  in progress a row of `limit_slots`, held by its replica until an expiry the replica
  pushes back every SLOT_REFRESH_S (`keep_alive`), so the slots of a replica that died
  free themselves within SLOT_TTL_S.
- Admission is check-then-insert over a sliding minute, and a reservation takes tokens
  and a slot together or neither: no single-row upsert says that. Each decision is one
  transaction holding a transaction-scoped advisory lock on its caller
  (`pg_advisory_xact_lock(LOCK_CLASS, hash(owner))`): two replicas admitting the same
  caller's requests take turns, no read-then-write race between them; other callers are
  not held up (a hash collision only makes two callers take turns).
- The windows use the wall clock (`time.time`): replicas on several machines share it
  (NTP); the in-memory limiter keeps its monotonic clock.
- Every database call of a request runs off the event loop: the `*_async` methods use
  `Database.run`; settling (called when a task ends, from async code) is handed to the
  storage's threads and not waited for — a settlement that fails (the database away)
  leaves the slot to its expiry and the tokens reserved to the window's end.

A storage fault while admitting leaves as `StorageUnavailable` (UNAVAILABLE / 503):
without the database, the node cannot tell what the caller may still do.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Float,
    Identity,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    cast,
    delete,
    func,
    literal,
    select,
    update,
)

from consortium.errors import RateLimited, StorageUnavailable
from consortium.node.auth import Caller
from consortium.node.limits import (
    CONCURRENCY_RETRY_S,
    UNLIMITED,
    WINDOW_S,
    CallerLimits,
    LimitSettings,
    Reservation,
)
from consortium.storage.database import Database

log = logging.getLogger(__name__)

# How long a slot outlives its replica's last refresh, and how often a replica refreshes.
SLOT_TTL_S = 30.0
SLOT_REFRESH_S = 10.0
# How often a replica deletes what left every window (any caller's).
PURGE_EVERY_S = 60.0
# The first key of the advisory lock a caller's admission holds (the second: its hash).
LOCK_CLASS = 0x4C494D  # "LIM"

METADATA = MetaData()
REQUESTS = Table(
    "limit_requests",
    METADATA,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("owner", Text, nullable=False),
    Column("at", Float(precision=53), nullable=False),
    Index("limit_requests_owner_at", "owner", "at"),
)
TOKENS = Table(
    "limit_tokens",
    METADATA,
    Column("id", Text, primary_key=True),
    Column("owner", Text, nullable=False),
    Column("at", Float(precision=53), nullable=False),
    Column("tokens", BigInteger, nullable=False),
    Index("limit_tokens_owner_at", "owner", "at"),
)
SLOTS = Table(
    "limit_slots",
    METADATA,
    Column("id", Text, primary_key=True),
    Column("owner", Text, nullable=False),
    Column("replica", Text, nullable=False),
    Column("expires_at", Float(precision=53), nullable=False),
    Index("limit_slots_owner", "owner"),
    Index("limit_slots_replica", "replica"),
)


@dataclass
class _Claim:
    """A reservation's rows: its tokens row and its slot (both named `id`)."""

    id: str
    tokens: int
    tokens_row: bool
    slot: bool
    # The insert of a claim taken again (`_reopen`), still running in a thread.
    pending: Future[None] | None = None


class SharedLimits(CallerLimits):
    """`CallerLimits` over the node's "limits" store on PostgreSQL (module docstring).
    `replica` names this replica's slots; `executor` runs settlements (default: a
    thread of its own)."""

    def __init__(
        self,
        settings: LimitSettings,
        db: Database,
        *,
        default_max_tokens: int = 0,
        clock: Callable[[], float] = time.time,
        window_s: float = WINDOW_S,
        replica: str | None = None,
        executor: ThreadPoolExecutor | None = None,
    ) -> None:
        super().__init__(
            settings, default_max_tokens=default_max_tokens, clock=clock, window_s=window_s
        )
        self._db = db
        self.replica = replica or uuid.uuid4().hex
        self._owned_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(1, thread_name_prefix="limits")
        self._pending: set[Future[None]] = set()
        self._pending_lock = threading.Lock()
        self._last_purge = 0.0

    # -- admission (blocking: from a thread, or through the *_async methods) -----------

    def count_request(self, caller: Caller) -> None:
        rpm = self.settings.requests_per_minute
        if not self.applies_to(caller) or not rpm:
            return
        now = self._clock()
        with self._db.begin() as conn:
            self._lock_caller(conn, caller.owner)
            self._purge(conn, now)
            count, oldest = conn.execute(
                select(func.count(), func.min(REQUESTS.c.at)).where(
                    REQUESTS.c.owner == caller.owner, REQUESTS.c.at > now - self._window_s
                )
            ).one()
            if count >= rpm:
                raise RateLimited(
                    f"Rate limit reached: {rpm} requests per minute",
                    kind="requests",
                    retry_after_s=oldest + self._window_s - now,
                )
            conn.execute(REQUESTS.insert().values(owner=caller.owner, at=now))

    def reserve(self, caller: Caller, tokens: int) -> Reservation:
        if not self.applies_to(caller):
            return UNLIMITED
        s = self.settings
        tpm, most = s.tokens_per_minute, s.concurrent_requests
        if not tpm and not most:
            return Reservation(self, caller.owner, None)
        now = self._clock()
        claim = _Claim(uuid.uuid4().hex, tokens, tokens_row=bool(tpm), slot=bool(most))
        with self._db.begin() as conn:
            self._lock_caller(conn, caller.owner)
            if most:
                held = conn.execute(
                    select(func.count()).where(
                        SLOTS.c.owner == caller.owner, SLOTS.c.expires_at > now
                    )
                ).scalar_one()
                if held >= most:
                    raise RateLimited(
                        f"Rate limit reached: {most} requests in progress at once",
                        kind="concurrency",
                        retry_after_s=CONCURRENCY_RETRY_S,
                    )
            if tpm and tokens > tpm:
                raise RateLimited(
                    f"Request too large: it may use {tokens} tokens (prompt and max_tokens), "
                    f"more than the limit of {tpm} tokens per minute; lower max_tokens or "
                    "shorten the prompt",
                    kind="tokens",
                    retry_after_s=self._window_s,
                )
            if tpm:
                spends = [
                    (float(at), int(n))
                    for at, n in conn.execute(
                        select(TOKENS.c.at, TOKENS.c.tokens)
                        .where(TOKENS.c.owner == caller.owner, TOKENS.c.at > now - self._window_s)
                        .order_by(TOKENS.c.at)
                    )
                ]
                total = sum(n for _, n in spends)
                if total + tokens > tpm:
                    raise RateLimited(
                        f"Rate limit reached: {tpm} tokens per minute (this request reserves "
                        f"{tokens}: its prompt and max_tokens)",
                        kind="tokens",
                        retry_after_s=self._free_at(spends, total, tpm - tokens, now) - now,
                    )
            self._insert(conn, caller.owner, claim, now)
        return Reservation(self, caller.owner, claim)

    async def count_request_async(self, caller: Caller) -> None:
        if not self.applies_to(caller) or not self.settings.requests_per_minute:
            return
        await self._db.run(lambda: self.count_request(caller))

    async def reserve_task_async(
        self, caller: Caller, prompt: str, max_tokens: int | None
    ) -> Reservation:
        if not self.applies_to(caller):
            return UNLIMITED
        tokens = self.task_tokens(prompt, max_tokens)
        if not self.settings.tokens_per_minute and not self.settings.concurrent_requests:
            return self.reserve(caller, tokens)  # nothing to keep: no query
        return await self._db.run(lambda: self.reserve(caller, tokens))

    # -- settling (from async code: handed to a thread, not waited for) ----------------

    def _settle(self, owner: str, spend: object, used: int) -> None:
        if not isinstance(spend, _Claim):
            return
        self._submit(lambda: self._settle_now(spend, used))

    def _reopen(self, owner: str, tokens: int) -> _Claim:
        s = self.settings
        claim = _Claim(
            uuid.uuid4().hex,
            tokens,
            tokens_row=bool(s.tokens_per_minute),
            slot=bool(s.concurrent_requests),
        )
        if claim.tokens_row or claim.slot:
            now = self._clock()

            def insert() -> None:
                with self._db.begin() as conn:
                    self._insert(conn, owner, claim, now)

            claim.pending = self._submit(insert)
        return claim

    def _settle_now(self, claim: _Claim, used: int) -> None:
        if claim.pending is not None:
            claim.pending.result()  # its rows exist before they are settled
        with self._db.begin() as conn:
            if claim.slot:
                conn.execute(delete(SLOTS).where(SLOTS.c.id == claim.id))
            if claim.tokens_row:
                # A row already out of the window (purged) is not brought back.
                conn.execute(update(TOKENS).where(TOKENS.c.id == claim.id).values(tokens=used))

    def _submit(self, call: Callable[[], None]) -> Future[None]:
        def run() -> None:
            try:
                call()
            except Exception as e:  # the database away: the slot expires by itself
                log.warning("per-key limits: a settlement was not stored: %s", type(e).__name__)
                raise

        try:
            future = self._executor.submit(run)
        except RuntimeError:  # the node stopped: close() freed this replica's slots
            future = Future()
            future.set_result(None)
            return future
        with self._pending_lock:
            self._pending.add(future)
        future.add_done_callback(self._done)
        return future

    def _done(self, future: Future[None]) -> None:
        with self._pending_lock:
            self._pending.discard(future)

    def wait_settled(self, timeout: float | None = None) -> None:
        """Waits until every settlement handed to a thread so far has run (tests, stop)."""
        with self._pending_lock:
            pending = list(self._pending)
        for future in pending:
            future.exception(timeout)

    # -- slots' expiry -----------------------------------------------------------------

    def refresh(self) -> int:
        """Pushes back the expiry of this replica's slots; how many it holds."""
        now = self._clock()
        with self._db.begin() as conn:
            result = conn.execute(
                update(SLOTS)
                .where(SLOTS.c.replica == self.replica)
                .values(expires_at=now + SLOT_TTL_S)
                .returning(SLOTS.c.id)
            )
            return len(result.all())

    async def keep_alive(self) -> None:
        """Refreshes this replica's slots every SLOT_REFRESH_S until cancelled (the node
        runs it while it serves); a refresh that fails is tried again at the next turn."""
        while True:
            # A fault is recorded by the storage layer; the slots live SLOT_TTL_S meanwhile.
            with contextlib.suppress(StorageUnavailable):
                await self._db.run(self.refresh)
            await asyncio.sleep(SLOT_REFRESH_S)

    def close(self) -> None:
        """Waits for the settlements in flight, then frees this replica's slots."""
        self.wait_settled(timeout=5.0)
        if self._owned_executor:
            self._executor.shutdown(wait=True)
        try:
            with self._db.begin() as conn:
                conn.execute(delete(SLOTS).where(SLOTS.c.replica == self.replica))
        except Exception as e:  # the slots expire by themselves
            log.warning("per-key limits: slots not freed at stop: %s", type(e).__name__)

    # -- helpers ---------------------------------------------------------------------

    def _insert(self, conn: Connection, owner: str, claim: _Claim, now: float) -> None:
        if claim.tokens_row:
            conn.execute(
                TOKENS.insert().values(id=claim.id, owner=owner, at=now, tokens=claim.tokens)
            )
        if claim.slot:
            conn.execute(
                SLOTS.insert().values(
                    id=claim.id, owner=owner, replica=self.replica, expires_at=now + SLOT_TTL_S
                )
            )

    @staticmethod
    def _lock_caller(conn: Connection, owner: str) -> None:
        key = int.from_bytes(hashlib.sha256(owner.encode()).digest()[:4], "big", signed=True)
        conn.execute(
            select(
                func.pg_advisory_xact_lock(
                    cast(literal(LOCK_CLASS), Integer), cast(literal(key), Integer)
                )
            )
        )

    def _purge(self, conn: Connection, now: float) -> None:
        if now - self._last_purge < PURGE_EVERY_S:
            return
        self._last_purge = now
        since = now - self._window_s
        conn.execute(delete(REQUESTS).where(REQUESTS.c.at <= since))
        conn.execute(delete(TOKENS).where(TOKENS.c.at <= since))
        conn.execute(delete(SLOTS).where(SLOTS.c.expires_at <= now))

    def _free_at(self, spends: list[tuple[float, int]], total: int, room: int, now: float) -> float:
        """When enough of the window's tokens will have left it for its sum to be at most
        `room` (CallerLimits._tokens_free_at over the rows read)."""
        for at, tokens in spends:
            total -= tokens
            if total <= room:
                return at + self._window_s
        return now + self._window_s
