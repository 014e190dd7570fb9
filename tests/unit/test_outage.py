"""OutageLog: one line when a dependency goes away, one when it is back; bugs stay loud."""

from __future__ import annotations

import logging

import pytest

from shared.outage import OutageLog


def test_an_outage_is_logged_once_and_its_end_once(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("test.outage")
    outage = OutageLog(log, "the database")
    with caplog.at_level(logging.INFO, logger="test.outage"):
        outage.succeeded()  # nothing to report while all is well
        for tick in range(50):
            outage.failed(ConnectionRefusedError(111, "Connect call failed"), f"tick {tick}")
        assert outage.down and outage.suppressed == 49
        outage.succeeded()
        outage.succeeded()
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert messages[0].startswith("the database is unavailable (ConnectionRefusedError")
    assert "while tick 0" in messages[0]
    assert messages[1].startswith("the database is back after")
    assert "49 more failures" in messages[1]
    assert all(r.exc_info is None for r in caplog.records)  # no tracebacks for an outage
    assert not outage.down


def test_other_errors_are_bugs_and_keep_their_traceback(caplog: pytest.LogCaptureFixture) -> None:
    outage = OutageLog(logging.getLogger("test.outage"), "the database")
    with caplog.at_level(logging.INFO, logger="test.outage"):
        for _ in range(2):
            outage.failed(KeyError("state"), "recomputing job 1")
    assert [r.levelname for r in caplog.records] == ["ERROR", "ERROR"]
    assert all(r.exc_info is not None for r in caplog.records)
    assert not outage.down
