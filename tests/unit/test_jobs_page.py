"""The jobs page's files: everything from this origin, the buttons from the lifecycle's table."""

from __future__ import annotations

import json
import re

from services.tracker.jobs_page import PAGE_HEADERS, JobsPage, page_config
from shared.lifecycle import ACTIVE_JOB_STATES, FINAL_JOB_STATES, JOB_ACTIONS, JobState
from shared.settings import Settings


def _config(html: str) -> dict[str, object]:
    block = re.search(r'<script type="application/json" id="config">(.*?)</script>', html, re.S)
    assert block is not None
    return json.loads(block.group(1))


def test_the_page_is_served_with_the_lifecycle_tables() -> None:
    config = _config(JobsPage.load().html)
    assert config == page_config()
    actions: dict[str, list[str]] = config["actions"]  # type: ignore[assignment]
    assert {a: set(states) for a, states in actions.items()} == dict(JOB_ACTIONS)
    assert set(config["states"]) == set(JobState)  # type: ignore[arg-type]
    assert set(config["final"]) == FINAL_JOB_STATES  # type: ignore[arg-type]
    assert set(config["live"]) == ACTIVE_JOB_STATES  # type: ignore[arg-type]


def test_nothing_is_loaded_from_elsewhere_and_no_script_is_inline() -> None:
    page = JobsPage.load()
    for text in (page.html, page.script, page.style):
        assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", text, re.I), text[:80]
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", page.html, re.S)
    assert [attrs for attrs, body in scripts if body.strip()] == [
        ' type="application/json" id="config"'
    ]  # the only script with a body is data, which default-src 'self' does not run
    assert "'unsafe-inline'" not in PAGE_HEADERS["Content-Security-Policy"]
    assert PAGE_HEADERS["Content-Security-Policy"].startswith("default-src 'self'")
    assert "$CONFIG" not in page.html


def test_the_page_never_puts_a_response_into_markup() -> None:
    script = JobsPage.load().script
    assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write", script)
    assert "localStorage.setItem" not in script and "document.cookie" not in script


def test_the_tracker_reaches_the_api_where_it_listens_unless_told() -> None:
    assert Settings(api_host="10.0.0.5", api_port=9000).jobs_page_api_base() == (
        "http://10.0.0.5:9000"
    )
    wildcard = Settings(api_host="0.0.0.0", api_port=9000)  # noqa: S104 - a bind address
    assert wildcard.jobs_page_api_base() == "http://127.0.0.1:9000"
    told = Settings(jobs_page_api_url="http://api:8000/", api_host="0.0.0.0")  # noqa: S104
    assert told.jobs_page_api_base() == "http://api:8000"
