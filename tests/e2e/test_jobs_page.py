"""The tracker's jobs page in headless Chromium (Debian's ``chromium``, driven by Playwright),
against the real processes and two simulated stores.

A user opens ``/jobs``, types the org's key and sees: a slow sync's progress bar move live (over
the SSE stream) and reach 100 %; pause, resume and cancel change the job's state in the database;
a job with an unstorable customer shows the line's error, and replay and retry send it again; a
refused action shows the api's 409 message. Buttons appear only where the lifecycle allows them.
Screenshots are kept under the test's tmp dir and in ``.woosync/artifacts/``: ``jobs-page.png``
(at the end, the failed job open) and ``jobs-page-live.png`` (a bar on its way).

Skipped only when no ``chromium`` is installed (``scripts/bootstrap`` installs it as root).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest

from services.tracker.jobs_page import PAGE_SIZE
from shared import db
from shared.settings import Settings
from tests.e2e.harness import Org, Stack, new_org, start_sync, wait_final
from tests.e2e.processes import fetch, fetchval, running_stack
from tests.factories import make_job
from tests.helpers import wait_until
from tools.woosim.testing import spawn_simulator

CHROMIUM = shutil.which("chromium")
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(300),
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium installed (apt-get install chromium)"),
]

ROOT = Path(__file__).resolve().parents[2]
ARTEFACTS = ROOT / ".woosync" / "artifacts"  # gitignored; kept after the run
UNSTORABLE = {"email": "a" * 320 + "@shop.example"}  # no storage holds it: fails at once
WAIT_MS = 120_000


async def _state(settings: Settings, job_id: str) -> str:
    return await fetchval(
        settings, "SELECT state FROM woo_customer_sync_queue WHERE id = $1::uuid", job_id
    )


async def _events(settings: Settings, job_id: str) -> list[str]:
    rows = await fetch(
        settings,
        "SELECT event FROM woo_sync_activity WHERE job_id = $1::uuid ORDER BY id",
        job_id,
    )
    return [r["event"] for r in rows]


def _row(job_id: str) -> str:
    return f'tr[data-job="{job_id}"]'


async def _buttons(page: Any, scope: str) -> list[str]:
    return await page.eval_on_selector_all(
        f"{scope} button[data-action]", "(bs) => bs.map((b) => b.dataset.action)"
    )


async def _width(page: Any, job_id: str) -> float:
    width = await page.eval_on_selector(f"{_row(job_id)} .fill", "(f) => f.style.width")
    return float(width.rstrip("%"))


async def _listed(page: Any) -> list[str]:
    return await page.eval_on_selector_all("tr.job", "(rs) => rs.map((r) => r.dataset.job)")


async def _done_jobs(settings: Settings, org: Org, count: int) -> set[str]:
    pool = await db.create_pool(settings.admin_database_url, min_size=1, max_size=1)
    try:
        org_id = UUID(org.org_id)
        jobs = [
            await make_job(pool, org_id, state="done", fetch_done=True, finished=True)
            for _ in range(count)
        ]
        return {str(job) for job in jobs}
    finally:
        await pool.close()


async def _keep(page: Any, tmp_path: Path, name: str) -> None:
    """A screenshot in the test's tmp dir, copied to ``.woosync/artifacts/``."""
    picture = tmp_path / name
    await page.screenshot(path=str(picture), full_page=True)
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(picture, ARTEFACTS / name)
    print(f"jobs page screenshot: {picture} (also {ARTEFACTS / name})")


async def test_the_jobs_page_shows_live_progress_failed_lines_and_acts(
    settings: Settings, tmp_path: Path
) -> None:
    from playwright.async_api import async_playwright, expect

    org = await new_org(settings)
    with (
        spawn_simulator(customers=120, seed=61) as bad,
        spawn_simulator(customers=1_000, seed=62, latency_ms=300) as slow,
    ):
        poison = (await bad.add_customer(**UNSTORABLE))["id"]
        async with running_stack(settings, tmp_path) as stack:
            failing = (await start_sync(stack, org, bad))["job_id"]
            assert (await wait_final(settings, failing))["state"] == "failed"
            # 50 pages of 20, one at a time, each answered after 300 ms: a bar to watch.
            live = (await start_sync(stack, org, slow, batch_size=20, concurrency=1))["job_id"]

            async with async_playwright() as playwright:
                browser = await playwright.chromium.launch(
                    executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
                )
                try:
                    page = await browser.new_page(viewport={"width": 1280, "height": 1000})
                    console: list[str] = []
                    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
                    page.on("dialog", lambda d: d.accept())  # cancel's confirmation

                    answer = await page.goto(stack.tracker_url + "/jobs")
                    assert answer is not None and answer.status == 200
                    headers = await answer.all_headers()
                    assert "default-src 'self'" in headers["content-security-policy"]
                    assert org.api_key not in await page.content()
                    await expect(page.locator("#login")).to_be_visible()

                    # A wrong key is refused and asked again; the right one opens the list.
                    await page.fill("#key", "wsk_not-a-key")
                    await page.click("#login button[type=submit]")
                    await expect(page.locator("#message")).to_contain_text("refused")
                    await expect(page.locator("#login")).to_be_visible()
                    await page.fill("#key", org.api_key)
                    await page.click("#login button[type=submit]")
                    await expect(page.locator(_row(live))).to_be_visible(timeout=WAIT_MS)
                    await expect(page.locator(_row(failing))).to_be_visible()
                    assert org.api_key not in page.url
                    assert await page.evaluate("localStorage.length") == 0
                    assert await page.context.cookies() == []

                    # The live bar moves (the list gave 0 %, the stream what follows).
                    seen: list[float] = []

                    async def moved() -> bool:
                        seen.append(await _width(page, live))
                        return 0 < seen[-1] < 100

                    await wait_until(moved, "the live bar between 0 and 100 %", 120)
                    await _keep(page, tmp_path, "jobs-page-live.png")
                    live_row = page.locator(_row(live))
                    assert await _buttons(page, _row(live)) == ["pause", "cancel"]
                    # The rate, once the tracker knows one (a job's first second shows "-").
                    await expect(live_row.locator("td").nth(4)).to_contain_text(
                        "/s", timeout=WAIT_MS
                    )

                    # Pause, then resume: the database follows the buttons.
                    await live_row.locator("button[data-action=pause]").click()
                    await expect(live_row.locator(".state")).to_have_text("paused", timeout=WAIT_MS)
                    assert await _state(settings, live) == "paused"
                    await expect(page.locator("#message")).to_contain_text("pause: the job is")
                    assert await _buttons(page, _row(live)) == ["resume", "cancel"]
                    paused_at = await _width(page, live)
                    await live_row.locator("button[data-action=resume]").click()
                    await expect(page.locator("#message")).to_contain_text("resume: the job is")
                    assert await _state(settings, live) in ("queued", "processing", "done")

                    # ... and the bar reaches 100 % as the job ends done.
                    await expect(live_row.locator(".state")).to_have_text("done", timeout=WAIT_MS)
                    await expect(live_row.locator(".fill")).to_have_attribute(
                        "style", "width: 100%;", timeout=WAIT_MS
                    )
                    assert (await wait_final(settings, live))["state"] == "done"
                    assert 0 < paused_at < 100, seen
                    assert await _buttons(page, _row(live)) == []  # done, nothing failed

                    # A stale button: the api's 409 is shown as it says it.
                    await page.evaluate(f"act({live!r}, 'pause')")
                    await expect(page.locator("#message")).to_contain_text(
                        "pause refused (409): the job is done"
                    )

                    # Cancel a new sync of the slow store.
                    again = await start_sync(stack, org, slow, batch_size=20, concurrency=1)
                    cancelled = again["job_id"]
                    await page.click("#refresh")
                    row = page.locator(_row(cancelled))
                    await expect(row.locator("button[data-action=cancel]")).to_be_visible(
                        timeout=WAIT_MS
                    )
                    await row.locator("button[data-action=cancel]").click()
                    await expect(row.locator(".state")).to_have_text("cancelled", timeout=WAIT_MS)
                    assert await _state(settings, cancelled) == "cancelled"
                    assert "job.cancelled" in await _events(settings, cancelled)
                    assert await _buttons(page, _row(cancelled)) == []

                    # The failed job: its line and error; replay and retry send it again.
                    await page.locator(_row(failing)).locator("td").first.click()
                    detail = page.locator("#detail")
                    await expect(detail.locator("tr.line")).to_have_count(1, timeout=WAIT_MS)
                    line = detail.locator("tr.line")
                    await expect(line.locator("td").first).to_have_text(str(poison))
                    await expect(line).to_contain_text("email is 333 characters")
                    await expect(detail.locator("#activity")).to_contain_text("job.failed")
                    assert await _buttons(page, "#detail-actions") == ["retry", "replay"]
                    await detail.locator("button[data-action=replay]").click()
                    await expect(page.locator("#message")).to_contain_text(
                        "replay: the job is processing (replayed 1, customers 1)",
                        timeout=WAIT_MS,
                    )
                    assert "dlq.replayed" in await _events(settings, failing)
                    assert (await wait_final(settings, failing))["state"] == "failed"
                    await page.click("#refresh")
                    await expect(page.locator(_row(failing)).locator(".state")).to_have_text(
                        "failed", timeout=WAIT_MS
                    )
                    await page.locator(_row(failing)).locator("td").first.click()
                    await detail.locator("button[data-action=retry]").click()
                    await expect(page.locator("#message")).to_contain_text(
                        "retry: the job is", timeout=WAIT_MS
                    )
                    assert "job.retried" in await _events(settings, failing)
                    assert (await wait_final(settings, failing))["state"] == "failed"

                    # The picture: every job, the failed one open with its line's error.
                    await page.click("#refresh")
                    await page.locator(_row(failing)).locator("td").first.click()
                    await expect(detail.locator("tr.line")).to_have_count(1, timeout=WAIT_MS)
                    await expect(detail.locator("#activity")).to_contain_text("job.retried")
                    await _keep(page, tmp_path, "jobs-page.png")

                    # Paging and the state filter, with a page's worth of newer jobs.
                    made = await _done_jobs(settings, org, PAGE_SIZE)
                    await page.click("#refresh")
                    await expect(page.locator("tr.job")).to_have_count(PAGE_SIZE)
                    assert set(await _listed(page)) == made
                    await page.click("#older")
                    await expect(page.locator(_row(failing))).to_be_visible(timeout=WAIT_MS)
                    assert await _listed(page) == [cancelled, live, failing]  # newest first
                    await expect(page.locator("#older")).to_be_disabled()
                    await page.click("#newer")
                    await expect(page.locator(_row(failing))).to_have_count(0, timeout=WAIT_MS)
                    assert set(await _listed(page)) == made
                    await page.select_option("#state", "failed")
                    await expect(page.locator("tr.job")).to_have_count(1, timeout=WAIT_MS)
                    assert await _listed(page) == [failing]

                    blocked = [m for m in console if "Content Security Policy" in m]
                    assert not blocked, blocked
                finally:
                    await browser.close()
            await _the_page_api_is_the_api_behind_the_key(stack, settings, org, failing)
            assert org.api_key not in stack.logs()


async def _the_page_api_is_the_api_behind_the_key(
    stack: Stack, settings: Settings, org: Org, job_id: str
) -> None:
    """The page's routes: no key 401, another org's key 404 (the api's tenancy), only the
    lifecycle's actions, nothing changed by a refusal."""
    other = await new_org(settings, "other")
    base = f"{stack.tracker_url}/jobs/api/jobs"
    before = await _events(settings, job_id)
    async with httpx.AsyncClient(timeout=30) as client:
        assert (await client.get(base)).status_code == 401
        assert (await client.post(f"{base}/{job_id}/retry")).status_code == 401
        theirs = await client.post(f"{base}/{job_id}/retry", headers=other.headers)
        assert theirs.status_code == 404 and theirs.json()["error"]["code"] == "job_not_found"
        assert (await client.get(f"{base}/{job_id}", headers=other.headers)).status_code == 404
        listed = await client.get(base, headers=other.headers)
        assert listed.status_code == 200 and listed.json()["items"] == []
        unknown = await client.post(f"{base}/{job_id}/force-done", headers=org.headers)
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "unknown_action"
        bad = await client.get(f"{base}?state=bogus", headers=org.headers)
        assert bad.status_code == 422 and "state" in bad.json()["error"]["message"]
        mine = await client.get(f"{base}/{job_id}/lines", headers=org.headers)
        assert mine.status_code == 200 and len(mine.json()["items"]) == 1
    assert await _events(settings, job_id) == before
