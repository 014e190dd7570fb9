"""The log formats: JSON lines with the service and the ids bound by ``log_context``, text for
terminals, and secrets masked everywhere in a line, the traceback included."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any
from uuid import uuid4

import pytest

from shared.logs import current_context, log_context, make_handler, resolve_format
from woosync.supervisor import children_log_format

SECRET = "cs_0123456789abcdef0123456789abcdef"
API_KEY = "wsk_Zq3xY7pL0mN8vB2cD4fG6hJ9kA1sE5tR"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO, list[logging.Handler]]]:
    """A logger writing through one service handler; the test picks the format."""
    logger = logging.getLogger(f"test.logs.{uuid4().hex}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    handlers: list[logging.Handler] = []
    stream = io.StringIO()
    yield logger, stream, handlers
    for handler in handlers:
        logger.removeHandler(handler)


def use(captured: Any, log_format: str) -> tuple[logging.Logger, io.StringIO]:
    logger, stream, handlers = captured
    handler = make_handler("fetcher", log_format, stream)  # type: ignore[arg-type]
    logger.addHandler(handler)
    handlers.append(handler)
    return logger, stream


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def fail_with_secret_in_source() -> None:
    try:
        raise ConnectionError("store said no to https://s/?consumer_secret=cs_0123456789abcdef01")
    except ConnectionError as exc:
        raise RuntimeError(f"giving up on {SECRET}") from exc


def test_json_line_has_service_level_time_and_the_bound_ids(captured: Any) -> None:
    logger, stream = use(captured, "json")
    job, org = uuid4(), uuid4()
    logger.info("outside")
    with log_context(job_id=job, org_id=org), log_context(message_id="m-1"):
        logger.warning("inside %d", 2)
    outside, inside = lines(stream)
    assert outside["service"] == "fetcher" and outside["level"] == "INFO"
    assert outside["message"] == "outside" and outside["logger"] == logger.name
    assert datetime.fromisoformat(outside["timestamp"]).utcoffset() == timedelta(0)
    assert "T" in outside["timestamp"]
    assert not {"job_id", "org_id", "message_id"} & outside.keys()
    assert inside["message"] == "inside 2" and inside["level"] == "WARNING"
    assert (inside["job_id"], inside["org_id"], inside["message_id"]) == (str(job), str(org), "m-1")


def test_context_nests_restores_and_follows_tasks() -> None:
    job = uuid4()

    async def in_a_task() -> dict[str, str]:
        return dict(current_context())

    async def run() -> tuple[dict[str, str], dict[str, str]]:
        with log_context(job_id=job, org_id="o"):
            with log_context(org_id=None, message_id="m"):  # None keeps the org bound
                seen = await asyncio.create_task(in_a_task())
            after = dict(current_context())
        return seen, after

    seen, after = asyncio.run(run())
    assert seen == {"job_id": str(job), "org_id": "o", "message_id": "m"}
    assert after == {"job_id": str(job), "org_id": "o"}
    assert dict(current_context()) == {}


def test_json_redacts_message_extra_fields_and_traceback(captured: Any) -> None:
    logger, stream = use(captured, "json")
    with log_context(job_id="j"):
        logger.info("calling %s", f"https://s/?consumer_secret={SECRET}&x=1")
        logger.info("key", extra={"authorization": f"Bearer {API_KEY}", "nested": [SECRET]})
        try:
            fail_with_secret_in_source()
        except RuntimeError:
            logger.exception("crawl failed")
    text = stream.getvalue()
    assert SECRET not in text and API_KEY not in text and "cs_0123456789abcdef01" not in text
    first, second, third = lines(stream)
    assert first["message"] == "calling https://s/?consumer_secret=***&x=1"
    assert second["authorization"] == "Bearer ***" and second["nested"] == ["cs_***"]
    trace = third["exc_info"]
    assert third["job_id"] == "j" and "Traceback" in trace
    # The exception's own text, the chained one's and the source line that holds a secret.
    assert "giving up on cs_***" in trace and "consumer_secret=***" in trace
    assert "fail_with_secret_in_source" in trace


def test_text_is_one_readable_line_ids_at_the_end_and_redacted_traceback(captured: Any) -> None:
    logger, stream = use(captured, "text")
    with log_context(job_id="j", org_id="o"):
        try:
            fail_with_secret_in_source()
        except RuntimeError:
            logger.exception("crawl failed")
    text = stream.getvalue()
    head = text.splitlines()[0]
    assert " fetcher ERROR " in head and head.endswith("crawl failed [job_id=j org_id=o]")
    assert "Traceback" in text and "giving up on cs_***" in text
    assert SECRET not in text and "cs_0123456789abcdef01" not in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(head)


def test_auto_is_text_on_a_terminal_json_elsewhere() -> None:
    assert resolve_format("auto", Terminal()) == "text"
    assert resolve_format("auto", io.StringIO()) == "json"
    assert resolve_format("text", io.StringIO()) == "text"
    assert resolve_format("json", Terminal()) == "json"


def test_woosync_up_decides_auto_for_its_children_by_its_own_output() -> None:
    assert children_log_format({}, Terminal()) == "text"
    assert children_log_format({"WOOSYNC_LOG_FORMAT": "auto"}, io.StringIO()) == "json"
    assert children_log_format({"WOOSYNC_LOG_FORMAT": "text"}, io.StringIO()) == "text"
