"""The lifecycle of a sync job and of its lines: their states, and who may move which to which.

This is the one place that spells a state. SQL that changes a state is built from these enums
(``sql_in``, ``sql_state``) and registered with :func:`changes_state`, which names the actor that
runs it and the moves it can make; ``tests/unit/test_lifecycle.py`` reads every registered
statement (and looks for unregistered ones) and fails on a move :data:`TRANSITIONS` does not
allow. Adding a state is one enum member, its rows in the table, one migration (the ``CHECK`` on
the state column) and the action that uses it.

Writing a state a row already has is no transition (a recount, a redelivery), so the table lists
only moves between two different states; ``None`` as a source is a row being created.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal
from uuid import UUID

import asyncpg


class JobState(StrEnum):
    DRAFT = "draft"  # created by a start; not yet handed to the fetcher
    QUEUED = "queued"  # sync.requested is published
    PROCESSING = "processing"  # the fetcher has taken it (or it was re-opened)
    PAUSED = "paused"  # held by hand: no page is read, no batch written, until a resume
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"  # ended by hand; its crawl stopped (crawl_stopped_at) or stops


class LineState(StrEnum):
    PENDING = "pending"  # recorded by the fetcher, on its way to the syncer
    PROCESSING = "processing"  # the syncer failed it once; a retry is on its way
    DONE = "done"
    FAILED = "failed"  # parked (its payload kept) or unsyncable (no payload)
    CANCELLED = "cancelled"  # its job was cancelled before it was settled
    CONFLICT = "conflict"  # edited in MantisNXT and in the store: waits for a person (manual)


# Open: counts against the org's cap and holds its connection (a paused job resumes).
OPEN_JOB_STATES: frozenset[JobState] = frozenset(
    {JobState.DRAFT, JobState.QUEUED, JobState.PROCESSING, JobState.PAUSED}
)
# Open and not paused: the fetcher may crawl them, a force-done may close them.
ACTIVE_JOB_STATES: frozenset[JobState] = frozenset(
    {JobState.DRAFT, JobState.QUEUED, JobState.PROCESSING}
)
# Handed to the fetcher: the states the tracker finishes and watches for stalls.
RUNNING_JOB_STATES: frozenset[JobState] = frozenset({JobState.QUEUED, JobState.PROCESSING})
FINAL_JOB_STATES: frozenset[JobState] = frozenset(
    {JobState.DONE, JobState.FAILED, JobState.CANCELLED}
)
# Not settled: a job with such lines is not finished. A conflict waits for a person, the others
# for a service (IN_FLIGHT_LINE_STATES).
IN_FLIGHT_LINE_STATES: frozenset[LineState] = frozenset({LineState.PENDING, LineState.PROCESSING})
OPEN_LINE_STATES: frozenset[LineState] = IN_FLIGHT_LINE_STATES | {LineState.CONFLICT}
FINAL_LINE_STATES: frozenset[LineState] = frozenset(
    {LineState.DONE, LineState.FAILED, LineState.CANCELLED}
)

# The job states in which each action of the api applies (any other state answers 409
# ``action_not_allowed``). The actions check against these, and the jobs page shows a button only
# where its action applies; tests/unit/test_lifecycle.py keeps them within TRANSITIONS' sources.
# A retry of a running job re-queues its failed lines without a move, so it applies there too; a
# replay applies to any job (with nothing parked it does nothing).
JOB_ACTIONS: Mapping[str, frozenset[JobState]] = {
    "retry": frozenset(JobState) - {JobState.PAUSED, JobState.CANCELLED},
    "replay": frozenset(JobState),
    "pause": RUNNING_JOB_STATES,
    "resume": frozenset({JobState.PAUSED}),
    "cancel": OPEN_JOB_STATES,
}

# Where a retry resumes a fetch that never read every page: a draft, or a finished job (fetch
# failed, forced done, cancelled is not retried); a running job's fetcher is still at work.
REFETCH_JOB_STATES: frozenset[JobState] = FINAL_JOB_STATES | {JobState.DRAFT}

# As pydantic fields (validated into the enum, shown in JSON schemas as a plain string enum):
# every job state, and the final ones (``sync.completed``). A test keeps them equal to the sets.
JobStateField = Literal[
    JobState.DRAFT,
    JobState.QUEUED,
    JobState.PROCESSING,
    JobState.PAUSED,
    JobState.DONE,
    JobState.FAILED,
    JobState.CANCELLED,
]
FinalJobState = Literal[JobState.DONE, JobState.FAILED, JobState.CANCELLED]


class Actor(StrEnum):
    """Who moves a state: the api's actions, the three services, a migration."""

    API_START = "api start"
    API_RETRY = "api retry"
    API_FORCE_DONE = "api force-done"
    API_PAUSE = "api pause"
    API_RESUME = "api resume"
    API_CANCEL = "api cancel"
    REPLAY = "replay"  # the api's replay action and the operator's ``woosync dlq replay``
    API_RESOLVE = "api resolve-conflicts"
    API_ORCHESTRATE = "api orchestrate"  # a parent job and its children (one per store)
    FETCHER = "fetcher"
    SYNCER = "syncer"
    TRACKER = "tracker"
    MIGRATION = "migration"
    SCHEDULER = "scheduler"  # the tracker's schedules (shared.schedules)


Entity = Literal["job", "line"]
State = JobState | LineState
Move = tuple[State | None, State]


@dataclass(frozen=True)
class Transition:
    actor: Actor
    entity: Entity
    sources: tuple[State | None, ...]  # None: the row is created in ``target``
    target: State
    why: str

    def moves(self) -> Iterable[Move]:
        return ((source, self.target) for source in self.sources)


J, L = JobState, LineState

# The one table of allowed moves. The diagram in docs/architecture.md is drawn from it.
TRANSITIONS: tuple[Transition, ...] = (
    # jobs
    Transition(Actor.API_START, "job", (None,), J.DRAFT, "a store was tested; a new job"),
    Transition(Actor.API_START, "job", (J.DRAFT,), J.QUEUED, "sync.requested published"),
    Transition(Actor.API_RETRY, "job", (J.DRAFT,), J.QUEUED, "sync.requested published"),
    Transition(Actor.SCHEDULER, "job", (None,), J.DRAFT, "a schedule fired; a new job"),
    Transition(Actor.SCHEDULER, "job", (J.DRAFT,), J.QUEUED, "sync.requested published"),
    Transition(Actor.API_ORCHESTRATE, "job", (None,), J.DRAFT, "a child job of one store"),
    Transition(Actor.API_ORCHESTRATE, "job", (None,), J.PROCESSING, "a parent over its children"),
    Transition(Actor.API_ORCHESTRATE, "job", (J.DRAFT,), J.QUEUED, "a child's sync.requested"),
    Transition(
        Actor.API_RETRY, "job", (J.DONE, J.FAILED), J.DRAFT, "its fetch never finished: read on"
    ),
    Transition(
        Actor.API_RETRY, "job", (J.DONE, J.FAILED), J.PROCESSING, "failed customers sent again"
    ),
    Transition(
        Actor.API_FORCE_DONE,
        "job",
        (J.DRAFT, J.QUEUED, J.PROCESSING),
        J.DONE,
        "closed by hand",
    ),
    Transition(Actor.API_PAUSE, "job", (J.QUEUED, J.PROCESSING), J.PAUSED, "held by hand"),
    Transition(
        Actor.API_RESUME, "job", (J.PAUSED,), J.QUEUED, "read on from the first unread page"
    ),
    Transition(
        Actor.API_RESUME, "job", (J.PAUSED,), J.PROCESSING, "every page read: held batches sent"
    ),
    Transition(
        Actor.API_CANCEL,
        "job",
        (J.DRAFT, J.QUEUED, J.PROCESSING, J.PAUSED),
        J.CANCELLED,
        "ended by hand",
    ),
    Transition(Actor.REPLAY, "job", (J.FAILED,), J.PROCESSING, "parked customers sent again"),
    Transition(Actor.FETCHER, "job", (J.DRAFT, J.QUEUED), J.PROCESSING, "the crawl begins"),
    # A parent (kind 'orchestration') finishes the same way: done when every child is done.
    Transition(Actor.TRACKER, "job", (J.QUEUED, J.PROCESSING), J.DONE, "every line done"),
    Transition(
        Actor.TRACKER,
        "job",
        (J.QUEUED, J.PROCESSING),
        J.FAILED,
        "lines failed, the fetch failed, or it stalled",
    ),
    Transition(Actor.TRACKER, "job", (J.FAILED,), J.DONE, "its failed lines were synced after all"),
    Transition(
        Actor.MIGRATION,
        "job",
        (J.DRAFT, J.QUEUED, J.PROCESSING),
        J.FAILED,
        "0009: a second job reading a merged store",
    ),
    # lines
    Transition(Actor.FETCHER, "line", (None,), L.PENDING, "a customer read from the store"),
    Transition(Actor.FETCHER, "line", (None,), L.FAILED, "an item that is no customer"),
    Transition(
        Actor.FETCHER,
        "line",
        (L.PENDING, L.PROCESSING, L.DONE, L.CONFLICT),
        L.FAILED,
        "a customer too large to send",
    ),
    Transition(
        Actor.SYNCER,
        "line",
        (None, L.PENDING, L.PROCESSING, L.FAILED),
        L.DONE,
        "written to customer",
    ),
    Transition(
        Actor.SYNCER,
        "line",
        (None, L.PENDING, L.FAILED),
        L.PROCESSING,
        "failed once; a retry is on its way",
    ),
    Transition(
        Actor.SYNCER,
        "line",
        (None, L.PENDING, L.PROCESSING),
        L.FAILED,
        "retries spent: parked",
    ),
    Transition(
        Actor.SYNCER,
        "line",
        (L.PENDING, L.PROCESSING),
        L.CANCELLED,
        "a batch of a cancelled job: not written",
    ),
    Transition(
        Actor.SYNCER,
        "line",
        (None, L.PENDING, L.PROCESSING, L.FAILED),
        L.CONFLICT,
        "edited in MantisNXT and the store (manual policy)",
    ),
    Transition(Actor.API_RETRY, "line", (L.FAILED,), L.PENDING, "sent to the syncer again"),
    Transition(
        Actor.API_CANCEL,
        "line",
        (L.PENDING, L.PROCESSING, L.CONFLICT),
        L.CANCELLED,
        "its job was cancelled",
    ),
    Transition(Actor.REPLAY, "line", (L.FAILED,), L.PENDING, "sent to the syncer again"),
    Transition(Actor.API_RESOLVE, "line", (L.CONFLICT,), L.DONE, "a person took one version"),
)


def allowed(actor: Actor, entity: Entity, source: State | None, target: State) -> bool:
    """Whether ``actor`` may move a ``entity`` from ``source`` to ``target`` (same: always)."""
    if source == target:
        return True
    return any(
        t.actor == actor and t.entity == entity and t.target == target and source in t.sources
        for t in TRANSITIONS
    )


# --- SQL that changes a state -------------------------------------------------------------------


def sql_state(state: State) -> str:
    """A state as an SQL literal."""
    return f"'{state.value}'"


def sql_in(states: Collection[State]) -> str:
    """States as an SQL list, ``('a', 'b')``, in the order the enum declares them."""
    ordered = [s for s in type(next(iter(states))) if s in states]
    return "(" + ", ".join(sql_state(s) for s in ordered) + ")"


@dataclass(frozen=True)
class StateChange:
    """A registered statement: the rows it changes, and the moves it makes per actor."""

    name: str
    sql: str
    entity: Entity
    moves: Mapping[Actor, frozenset[Move]]


STATE_CHANGES: dict[str, StateChange] = {}


def moves(sources: Iterable[State | None], targets: Iterable[State]) -> frozenset[Move]:
    """Every source to every target (a statement whose target is a parameter or a CASE)."""
    targets = tuple(targets)
    return frozenset((s, t) for s in sources for t in targets)


def changes_state(name: str, entity: Entity, by: Mapping[Actor, frozenset[Move]], sql: str) -> str:
    """Register a statement that changes a job's or a line's state; returns the SQL as is."""
    if name in STATE_CHANGES and STATE_CHANGES[name].sql != sql:
        raise ValueError(f"two state changes named {name}")
    STATE_CHANGES[name] = StateChange(name, sql, entity, dict(by))
    return sql


# Migrations that changed states (plain SQL files, so registered here by file name).
MIGRATION_CHANGES: dict[str, StateChange] = {
    "0009_one_connection_per_store": StateChange(
        "migration.0009_one_connection_per_store",
        "",  # the file itself: migrations/0009_one_connection_per_store.up.sql
        "job",
        {Actor.MIGRATION: moves(ACTIVE_JOB_STATES, (J.FAILED,))},
    ),
}


def forbidden(change: StateChange) -> list[tuple[Actor, Move]]:
    """The moves of a statement that the table does not allow (none, for a good statement)."""
    return sorted(
        (
            (actor, move)
            for actor, made in change.moves.items()
            for move in made
            if not allowed(actor, change.entity, *move)
        ),
        key=str,
    )


def failure_cleared(job: str, counts: str) -> str:
    """SQL: the ``failed`` job ``job`` (alias) has nothing left of its failure. Its pages were all
    read (a fetch failure never sets fetch_done_at, so it failed because of its lines) and, by
    ``counts`` (columns ``failed`` and ``open`` of its lines), none of its lines is failed or open
    any more: its parked customers were moved back and synced, or its stalled services came back.
    The tracker then finishes it as done; a replay re-opens it for the tracker to finish."""
    return (
        f"({job}.state = {sql_state(J.FAILED)} AND {job}.fetch_done_at IS NOT NULL"
        f" AND {counts}.open = 0 AND {counts}.failed = 0)"
    )


# --- Re-opening a job ---------------------------------------------------------------------------

# $1 uuid[] jobs, $2 uuid[] their orgs (same order), $3 uuid[] jobs to re-open whatever their
# lines say, $4 the state they go to, $5 text[] the states they may leave, $6 whether only jobs
# whose pages were all read re-open. A job not in $3 re-opens when its failure is cleared (its
# parked batches were moved back another way). finished_at and last_error are
# cleared and the counts recomputed from the lines (as the tracker does), so the status answered
# right away is right; the tracker finishes the job again later.
REOPEN_JOBS = changes_state(
    "lifecycle.REOPEN_JOBS",
    "job",
    {
        Actor.API_RETRY: moves((J.DONE, J.FAILED), (J.DRAFT, J.PROCESSING)),
        Actor.REPLAY: moves((J.FAILED,), (J.PROCESSING,)),
    },
    f"""
UPDATE woo_customer_sync_queue AS j
SET state = $4::text,
    finished_at = NULL,
    last_error = NULL,
    updated_at = now(),
    done_count = c.done,
    failed_count = c.failed,
    rate_per_s = 0.0
FROM (
    SELECT job.id AS job_id, job.org_id,
           count(l.woo_id) FILTER (WHERE l.state = {sql_state(L.DONE)}) AS done,
           count(l.woo_id) FILTER (WHERE l.state = {sql_state(L.FAILED)}) AS failed,
           count(l.woo_id) FILTER (WHERE l.state IN {sql_in(OPEN_LINE_STATES)}) AS open
    FROM unnest($1::uuid[], $2::uuid[]) AS job(id, org_id)
    LEFT JOIN woo_customer_sync_queue_line AS l
           ON l.job_id = job.id AND l.org_id = job.org_id
    GROUP BY job.id, job.org_id
) AS c
WHERE j.id = c.job_id AND j.org_id = c.org_id
  AND j.state = ANY($5::text[])
  AND (NOT $6::boolean OR j.fetch_done_at IS NOT NULL)
  AND (j.id = ANY($3::uuid[]) OR {failure_cleared("j", "c")})
RETURNING j.id
""",
)


async def reopen_jobs(
    conn: asyncpg.Connection,
    actor: Actor,
    jobs: Sequence[tuple[UUID, UUID]],
    *,
    to: JobState,
    leaving: Collection[JobState],
    whatever_lines: Collection[UUID] = (),
    only_fetched: bool = False,
) -> set[UUID]:
    """Re-open ``jobs`` ((job id, org id) pairs, rows already locked) in state ``to``: the one
    way a finished job opens again (the api's retry, a replay). The jobs that re-opened.

    ``leaving`` are the states a job may be in to re-open; ``whatever_lines`` the jobs that
    re-open even if some of their lines are still failed or open.
    """
    for source in leaving:
        if not allowed(actor, "job", source, to):
            raise ValueError(f"{actor} may not move a job from {source} to {to}")
    if not jobs:
        return set()
    rows = await conn.fetch(
        REOPEN_JOBS,
        [job for job, _ in jobs],
        [org for _, org in jobs],
        list(whatever_lines),
        to.value,
        [s.value for s in leaving],
        only_fetched,
    )
    return {row["id"] for row in rows}


# --- The diagram --------------------------------------------------------------------------------


def mermaid(entity: Entity) -> str:
    """The state diagram of ``entity`` as mermaid, drawn from :data:`TRANSITIONS`."""
    edges: dict[tuple[str, str], list[str]] = {}
    for t in TRANSITIONS:
        if t.entity != entity:
            continue
        for source, target in t.moves():
            key = ("[*]" if source is None else source.value, target.value)
            if t.actor.value not in edges.setdefault(key, []):
                edges[key].append(t.actor.value)
    lines = ["stateDiagram-v2"]
    lines += [f"    {s} --> {t}: {', '.join(actors)}" for (s, t), actors in edges.items()]
    final, word = (FINAL_JOB_STATES, "final") if entity == "job" else (FINAL_LINE_STATES, "settled")
    lines += [f"    note right of {s.value} : {word}" for s in sorted(final)]
    return "\n".join(lines)
