"""Progress lines for long steps: at most one every ``every`` seconds, with rate and ETA.

Logged on the ``corpuslab.progress`` logger, which Dagster captures into the run's logs (the
instance lists ``corpuslab`` among its managed Python loggers) and ``corpuslab`` prints in the
terminal, so a long dedup, encoding or evaluation is never silent for minutes.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger("corpuslab.progress")
EVERY_S = 10.0


class Progress:
    """Counts work done towards ``total`` and reports it every ``every`` seconds and at the end."""

    def __init__(self, what: str, total: int | None, unit: str, every: float = EVERY_S) -> None:
        self.what, self.total, self.unit, self.every = what, total, unit, every
        self.done = 0
        self.start = self.last = time.perf_counter()

    def advance(self, n: int = 1, note: str = "") -> None:
        self.done += n
        now = time.perf_counter()
        finished = self.total is not None and self.done >= self.total
        if now - self.last >= self.every or finished:
            self.last = now
            log.info(self.line(now, note))

    def line(self, now: float | None = None, note: str = "") -> str:
        elapsed = (now or time.perf_counter()) - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        of = f"/{self.total:,}" if self.total is not None else ""
        text = f"{self.what}: {self.done:,}{of} {self.unit} ({rate:,.1f}/s"
        if self.total is not None and 0 < self.done < self.total and rate > 0:
            text += f", ETA {eta((self.total - self.done) / rate)}"
        return text + (f"; {note}" if note else "") + ")"


def eta(seconds: float) -> str:
    """``42 s``, ``3 min 5 s``, ``1 h 2 min``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"
