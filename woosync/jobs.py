"""``woosync jobs list|show|watch``: a client of the HTTP api and the tracker's progress stream.

Unlike the operator commands (``key``, ``dlq``), these speak HTTP with an org's API key, exactly
as any client would: the key comes from ``WOOSYNC_API_KEY`` (or ``--api-key``) and is never
printed; the api from ``--api-url`` (default: ``WOOSYNC_PUBLIC_API_URL``, else the api's host and
port). ``watch`` takes the tracker's address from the job's ``progress_url`` (the api's
``WOOSYNC_PUBLIC_TRACKER_URL``), unless ``--tracker-url`` says otherwise, and opens the stream
with the API key, not the short-lived token, so that it can resume for as long as the job runs.

Exit codes: 0 done; 1 the job failed; 2 refused (key, unknown job, bad input) or unreachable.
"""

from __future__ import annotations

import asyncio
import functools
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import click
import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from shared.lifecycle import FINAL_JOB_STATES, JobState, LineState
from shared.paths import JOB_ACTIVITY_PATH, JOB_LINES_PATH, JOB_PATH, JOBS_PATH, PROGRESS_PATH
from shared.settings import Settings
from woosync.progress import StreamEvent, StreamRefused, follow_resuming

TIMEOUT_S = 30.0
EXIT_DONE, EXIT_FAILED, EXIT_REFUSED = 0, 1, 2


class Client:
    """The api with one key; any error answer becomes a ClickException with its message."""

    def __init__(self, api_url: str, api_key: str) -> None:
        self.api_url = api_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"}

    def get(self, path: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        query = {k: str(v) for k, v in (params or {}).items() if v is not None}
        try:
            response = httpx.get(
                self.api_url + path, params=query, headers=self.headers, timeout=TIMEOUT_S
            )
        except httpx.TransportError as exc:
            message = f"cannot reach the api at {self.api_url} ({type(exc).__name__})"
            raise _refused(message) from None
        if response.status_code != 200:
            raise _refused(f"the api answered {response.status_code}: {_message(response)}")
        body: dict[str, Any] = response.json()
        return body

    def pages(self, path: str, params: dict[str, Any], every: bool) -> list[dict[str, Any]]:
        """The first page's items, or every page's when ``every``."""
        items: list[dict[str, Any]] = []
        cursor = params.get("cursor")
        while True:
            page = self.get(path, {**params, "cursor": cursor})
            items += page["items"]
            cursor = page["next_cursor"]
            if cursor is None or not every:
                if cursor is not None:
                    click.echo(f"more: --cursor {cursor}", err=True)
                return items


def _message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200] or "no details"


def _refused(message: str) -> click.ClickException:
    error = click.ClickException(message)
    error.exit_code = EXIT_REFUSED
    return error


@dataclass(frozen=True)
class Access:
    """Where the api is and the key, from the group's options; checked when a command runs
    (so that ``--help`` needs no key)."""

    api_url: str
    api_key: str | None

    def client(self) -> Client:
        if not self.api_key:
            raise _refused("an API key is needed: set WOOSYNC_API_KEY (or pass --api-key)")
        return Client(self.api_url, self.api_key)


def pass_client(command: Callable[..., None]) -> Callable[..., None]:
    @click.pass_context
    @functools.wraps(command)
    def run(ctx: click.Context, /, *args: Any, **kwargs: Any) -> None:
        command(ctx.find_object(Access).client(), *args, **kwargs)

    return run


@click.group()
@click.option("--api-url", help="The api's base URL [default: from WOOSYNC_PUBLIC_API_URL].")
@click.option(
    "--api-key",
    envvar="WOOSYNC_API_KEY",
    show_envvar=True,
    help="An API key of the org (better given in the environment than on the command line).",
)
@click.pass_context
def jobs(ctx: click.Context, api_url: str | None, api_key: str | None) -> None:
    """An org's sync jobs through the HTTP api: list, show, watch."""
    settings = Settings()
    key = api_key or (settings.api_key.get_secret_value() if settings.api_key else None)
    ctx.obj = Access(api_url or settings.api_base(), key)


@jobs.command("list")
@click.option("--state", type=click.Choice([s.value for s in JobState]), help="Only this state.")
@click.option("--connection", "connection_id", help="Only jobs of this store connection (id).")
@click.option("--limit", default=20, show_default=True, help="Jobs per page (at most 200).")
@click.option("--cursor", help="Start after this page (the cursor a previous list printed).")
@click.option("--all", "every", is_flag=True, help="Follow every page.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@pass_client
def list_jobs(
    client: Client,
    state: str | None,
    connection_id: str | None,
    limit: int,
    cursor: str | None,
    every: bool,
    as_json: bool,
) -> None:
    """The org's jobs, newest first."""
    params = {"state": state, "connection_id": connection_id, "limit": limit, "cursor": cursor}
    items = client.pages(JOBS_PATH, params, every)
    if as_json:
        for item in items:
            click.echo(json.dumps(item))
        return
    table = Table("Job", "State", "Store", "Done", "Failed", "Total", "Created")
    for status in items:
        table.add_row(
            status["job_id"],
            status["state"],
            status["store_url"] or f"({status.get('kind', 'orchestration')})",
            str(status["done"]),
            str(status["failed"]),
            str(status["total"]),
            status["created_at"][:19].replace("T", " "),
        )
    Console().print(table)


@jobs.command("show")
@click.argument("job_id")
@click.option(
    "--lines",
    "line_state",
    type=click.Choice([s.value for s in LineState]),
    default=LineState.FAILED.value,
    show_default=True,
    help="Which of its lines to show.",
)
@click.option("--limit", default=20, show_default=True, help="Lines and activity entries shown.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: status, lines, activity.")
@pass_client
def show_job(client: Client, job_id: str, line_state: str, limit: int, as_json: bool) -> None:
    """A job's status (with rate and ETA), its failed lines and its activity log."""
    status = client.get(JOB_PATH.format(job_id=job_id))
    lines = client.get(JOB_LINES_PATH.format(job_id=job_id), {"state": line_state, "limit": limit})
    log = client.get(JOB_ACTIVITY_PATH.format(job_id=job_id), {"limit": limit})
    if as_json:
        click.echo(
            json.dumps({"status": status, "lines": lines["items"], "activity": log["items"]})
        )
        return
    console = Console()
    summary = Table(show_header=False, title=f"job {status['job_id']}")
    done, failed = status["done"], status["failed"]
    rows = {
        "State": status["state"],
        "Done / failed / total": f"{done} / {failed} / {status['total']}",
        "Percent": status["percent"],
        "Rate": _rate(status),
        "ETA": _eta(status),
        "Created": status["created_at"],
        "Finished": status["finished_at"] or "-",
        "Last error": status["last_error"] or "-",
    }
    for label, value in rows.items():
        summary.add_row(label, str(value))
    console.print(summary)
    table = Table("woo_id", "attempts", "retryable", "error", title=f"{line_state} lines")
    for line in lines["items"]:
        table.add_row(
            str(line["woo_id"]), str(line["attempts"]), str(line["retryable"]),
            line["last_error"] or "",
        )  # fmt: skip
    console.print(table)
    if lines["next_cursor"]:
        console.print(f"(more {line_state} lines: GET {JOB_LINES_PATH.format(job_id=job_id)})")
    activity = Table("at", "level", "event", "by", title="activity")
    for entry in log["items"]:
        activity.add_row(
            entry["at"][:19].replace("T", " "), entry["level"], entry["event"], entry["by"] or "-"
        )
    console.print(activity)


def _rate(status: dict[str, Any]) -> str:
    rate = status.get("rate_per_s")
    return "-" if rate is None else f"{rate:,.1f}/s"


def _eta(status: dict[str, Any]) -> str:
    eta = status.get("eta_s")
    if eta is None:
        return "-"
    minutes, seconds = divmod(int(eta), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"


def stream_url(progress_url: str, tracker_url: str | None, job_id: str) -> str:
    """The job's stream without the token: at ``tracker_url`` if given, else where the api
    said (``progress_url``)."""
    if tracker_url:
        return tracker_url.rstrip("/") + PROGRESS_PATH.format(job_id=job_id)
    parts = urlsplit(progress_url)
    return urlunsplit(parts._replace(query="", fragment=""))


@jobs.command("watch")
@click.argument("job_id")
@click.option("--tracker-url", help="The tracker's base URL [default: the job's progress_url].")
@click.option("--json", "as_json", is_flag=True, help="Each event as one JSON line, no bar.")
@click.option(
    "--give-up-after", default=300.0, show_default=True,
    help="Seconds without a connection to the tracker before giving up.",
)  # fmt: skip
@pass_client
def watch_job(
    client: Client, job_id: str, tracker_url: str | None, as_json: bool, give_up_after: float
) -> None:
    """Follow a job's progress live until it ends; exit 1 if it failed.

    Reconnects when the stream drops (a tracker restart, a network blip) with Last-Event-ID,
    without showing an event twice."""
    status = client.get(JOB_PATH.format(job_id=job_id))
    url = stream_url(status["progress_url"], tracker_url, job_id)
    final = asyncio.run(_watch(url, client.headers, as_json, give_up_after))
    sys.exit(EXIT_DONE if final["state"] == JobState.DONE else EXIT_FAILED)


async def _watch(
    url: str, headers: dict[str, str], as_json: bool, give_up_after_s: float
) -> dict[str, Any]:
    err = Console(stderr=True)

    def retrying(message: str) -> None:
        err.print(f"[yellow]{message}[/]")

    events = follow_resuming(
        url, headers=headers, give_up_after_s=give_up_after_s, on_retry=retrying
    )
    final: dict[str, Any] | None = None
    try:
        if as_json:
            async for event in events:
                click.echo(json.dumps({"event": event.event, "id": event.id, **event.status}))
                final = event.status
        else:
            final = await _show_bar(events, err)
    except StreamRefused as exc:
        raise _refused(f"the progress stream was refused: {exc}") from None
    except TimeoutError as exc:
        raise _refused(str(exc)) from None
    if final is None or final["state"] not in FINAL_JOB_STATES:
        raise _refused("the stream ended before the job did")
    return final


async def _show_bar(events: Any, console: Console) -> dict[str, Any] | None:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("failed {task.fields[failed]}"),
        TextColumn("{task.fields[rate]}"),
        TextColumn("ETA {task.fields[eta]}"),
    )
    final: dict[str, Any] | None = None
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("connecting", total=None, failed=0, rate="-", eta="-")
        event: StreamEvent
        async for event in events:
            status = final = event.status
            bar.update(
                task,
                description=status["state"],
                completed=status["done"] + status["failed"],
                total=status["total"] or None,
                failed=status["failed"],
                rate=_rate(status),
                eta=_eta(status),
            )
    if final is not None:
        status = final
        done, failed = status["done"], status["failed"]
        console.print(f"job {status['job_id']}: {status['state']} ({done} done, {failed} failed)")
    return final
