"""Where the trust pipeline's synchronous calls run: inline on SQLite, in the storage's
threads on PostgreSQL.

Verifying a message (`MessageVerifier.verify/check/verify_call`: its replay-cache insert
and its audit entry) and signing one (`Signer.sign_*`: its audit entry) are plain
functions of their stores, shared by the node, the CLI and the auditor's tools. On
SQLite their writes are local and short (tens of microseconds), and a hop to a thread
and back costs more than the write itself: the node makes them inline. On PostgreSQL
each is a round trip to the database that would stop the event loop for every other
call meanwhile: the node makes them in the storage's threads (`Storage.executor`, as
many as the pool has connections), with the caller's context (its current span), so
the spans they open or annotate stay where they were.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from concurrent.futures import Executor
from typing import TypeVar

from consortium.storage.storage import Storage

_T = TypeVar("_T")


class Offload:
    """Runs a synchronous call for async code: inline (`executor` None) or in
    `executor`, off the event loop."""

    def __init__(self, executor: Executor | None = None) -> None:
        self._executor = executor

    @property
    def inline(self) -> bool:
        return self._executor is None

    async def __call__(self, call: Callable[[], _T]) -> _T:
        if self._executor is None:
            return call()
        context = contextvars.copy_context()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, context.run, call)


INLINE = Offload()


def offload_for(storage: Storage | None) -> Offload:
    """The node's choice for its storage (module docstring)."""
    if storage is not None and storage.kind == "postgresql":
        return Offload(storage.executor)
    return INLINE
