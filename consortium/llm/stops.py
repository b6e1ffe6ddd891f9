"""Stop strings over streamed text: emit only what can no longer become a stop string."""

from __future__ import annotations

from collections.abc import Sequence


class StopMatcher:
    """Feed text as it arrives; get back the part that is safe to show.

    Text that could be the beginning of a stop string is held back until the next
    piece decides it. Once a stop string appears, everything from it on is dropped.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._held = ""
        self.stopped = False

    def feed(self, text: str) -> tuple[str, bool]:
        if self.stopped:
            return "", True
        buf = self._held + text
        cut = min((i for i in (buf.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self._held = ""
            self.stopped = True
            return buf[:cut], True
        keep = 0
        for s in self._stops:
            for n in range(min(len(s) - 1, len(buf)), 0, -1):
                if buf.endswith(s[:n]):
                    keep = max(keep, n)
                    break
        self._held = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep], False

    def flush(self, text: str = "") -> str:
        """End of generation: whatever is held back is real text after all."""
        if self.stopped:
            return ""
        out, _ = self.feed(text)
        out += self._held
        self._held = ""
        return out
