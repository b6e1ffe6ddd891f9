"""Keeps a node's view of the roster current: reloads federation.toml when it changes,
and keeps the previous roster when the new file is unsigned, wrongly signed or malformed.
`check_now` looks at the file at once (the node's SIGHUP, systemd's ExecReload)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from jwcrypto import jwk

from consortium.federation.roster import Roster, RosterError, load_verified_roster

log = logging.getLogger(__name__)


class RosterWatcher:
    """`current()` returns the last valid roster; it checks the file at most every
    `check_interval_s` (a stat), so a change takes effect on the next message."""

    def __init__(
        self, path: Path, admin_keys: list[jwk.JWK], check_interval_s: float = 0.5
    ) -> None:
        self._path = path
        self._admin_keys = admin_keys
        self._interval = check_interval_s
        self._lock = threading.Lock()
        self._roster = load_verified_roster(path, admin_keys)  # at start: fail loudly
        self._stamp = self._stat()
        self._checked = time.monotonic()
        self.reloads = 0
        self.refused = 0
        self._listeners: list[Callable[[Roster], None]] = []

    def subscribe(self, listener: Callable[[Roster], None]) -> None:
        """Calls `listener` with every roster version taken after this (not the refused)."""
        self._listeners.append(listener)

    def _stat(self) -> tuple[int, int, int]:
        try:
            st = self._path.stat()
        except FileNotFoundError:
            return (0, 0, 0)
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def current(self) -> Roster:
        now = time.monotonic()
        if now - self._checked < self._interval:
            return self._roster
        return self.check_now()

    def check_now(self) -> Roster:
        """Looks at the file now, whatever the interval, and reloads it if it changed;
        returns the roster in force (the previous one when the new file is refused)."""
        with self._lock:
            self._checked = time.monotonic()
            stamp = self._stat()
            if stamp != self._stamp:
                self._stamp = stamp
                self._reload()
            return self._roster

    def _reload(self) -> None:
        try:
            roster = load_verified_roster(self._path, self._admin_keys)
        except RosterError as e:
            self.refused += 1
            log.warning(
                "roster %s refused, keeping version %d: %s", self._path, self._roster.version, e
            )
            return
        if roster.federation_id != self._roster.federation_id:
            self.refused += 1
            log.warning(
                "roster %s names another federation (%s); keeping the current one",
                self._path,
                roster.federation_id,
            )
            return
        if roster.version < self._roster.version:
            self.refused += 1
            log.warning(
                "roster %s is older (version %d) than the current one (%d); ignored",
                self._path,
                roster.version,
                self._roster.version,
            )
            return
        self._roster = roster
        self.reloads += 1
        for listener in self._listeners:
            listener(roster)
        log.info(
            "roster %s reloaded: version %d, %d member(s)",
            self._path,
            roster.version,
            len(roster.members),
        )
