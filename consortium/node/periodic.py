"""The node's background loops (trust reports, canaries, audit checkpoints, witnessing):
one step every interval until cancelled, a failed step logged by its type (never its
message, which may hold a peer's text) and the next one run as planned. A step that
fails because the disk cannot be written is not logged again: `consortium.sqlite` logs
that once per interval."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable

from consortium.errors import StorageUnavailable

log = logging.getLogger(__name__)


async def every(
    interval_s: float, step: Callable[[], object | Awaitable[object]], what: str
) -> None:
    """Runs `step` (a function or a coroutine function) every `interval_s` seconds, the
    first time after one interval; never when `interval_s` is 0 or less."""
    if interval_s <= 0:
        return
    while True:
        await asyncio.sleep(interval_s)
        try:
            result = step()
            if inspect.isawaitable(result):
                await result
        except asyncio.CancelledError:
            raise
        except StorageUnavailable:
            continue
        except Exception as e:  # a background step must never end the node
            log.error("%s failed: %s", what, type(e).__name__)
