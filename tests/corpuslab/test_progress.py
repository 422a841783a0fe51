"""Progress lines: throttled to one per interval, always one at the end, with rate and ETA."""

from __future__ import annotations

import logging

import pytest

from corpuslab.progress import Progress, eta


def test_lines_are_throttled_and_the_last_one_always_comes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="corpuslab.progress")
    progress = Progress("dedup/r: signatures", total=5, unit="shards", every=3600)
    for _ in range(4):
        progress.advance()
    assert caplog.records == []  # within the interval: silent
    progress.advance(note="s4 computed")
    (record,) = caplog.records
    assert record.getMessage().startswith("dedup/r: signatures: 5/5 shards (")
    assert record.getMessage().endswith("; s4 computed)")


def test_every_advance_reports_when_the_interval_is_zero(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="corpuslab.progress")
    progress = Progress("encoding", total=4, unit="shards", every=0.0)
    progress.advance()
    assert "1/4 shards" in caplog.records[0].getMessage()
    assert "ETA" in caplog.records[0].getMessage()


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.4, "0 s"), (42, "42 s"), (185, "3 min 5 s"), (3720, "1 h 2 min")]
)
def test_eta_reads_like_a_person_would_say_it(seconds: float, text: str) -> None:
    assert eta(seconds) == text
