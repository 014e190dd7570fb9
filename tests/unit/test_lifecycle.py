"""The lifecycle table is the law: every statement that changes a state keeps to it.

Reads every statement of the services and shared modules (and every migration) that writes a
job's or a line's state, insists that each is registered in ``shared.lifecycle`` with its moves,
that the states its SQL writes are the ones it declares, and that the table allows every move.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import subprocess
from pathlib import Path
from types import ModuleType
from typing import get_args

import pytest

import services
import shared
import woosync
from shared import lifecycle
from shared.lifecycle import (
    FINAL_JOB_STATES,
    OPEN_JOB_STATES,
    STATE_CHANGES,
    TRANSITIONS,
    Actor,
    JobState,
    LineState,
    StateChange,
    forbidden,
    moves,
)

ROOT = Path(__file__).resolve().parents[2]
STATE_TABLES = r"woo_customer_sync_queue(?:_line)?"
# The SET clause of an UPDATE of a job or line table (up to its FROM, WHERE or RETURNING).
UPDATE_SET = re.compile(
    rf"\bUPDATE\s+({STATE_TABLES})\b(?:\s+(?:AS\s+)?\w+)?\s+SET\s+(.*?)(?=\bFROM\b|\bWHERE\b|\bRETURNING\b|$)",
    re.S | re.I,
)
INSERT = re.compile(rf"\bINSERT\s+INTO\s+({STATE_TABLES})\b", re.I)
ASSIGNS_STATE = re.compile(r"(?:^|,)\s*state\s*=", re.I)
# The value assigned to state in a SET clause: up to the next top-level assignment.
STATE_VALUE = re.compile(r"(?:^|,)\s*state\s*=\s*(CASE\b.*?\bEND|[^,]+)", re.S | re.I)
LITERAL = re.compile(r"'(\w+)'")


def _modules() -> list[ModuleType]:
    found = []
    for package in (services, shared, woosync):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if info.name.endswith("__main__"):
                continue
            found.append(importlib.import_module(info.name))
    return found


MODULES = _modules()  # importing them registers their statements


def _statements() -> list[tuple[str, str]]:
    """(where, sql) of every module-level SQL string that writes a job's or a line's state."""
    out = []
    for module in MODULES:
        for name, value in vars(module).items():
            if name.isupper() and isinstance(value, str) and _writes_state(value):
                out.append((f"{module.__name__}.{name}", value))
    return out


def _writes_state(sql: str) -> bool:
    if INSERT.search(sql):
        return True
    return any(ASSIGNS_STATE.search(m.group(2)) for m in UPDATE_SET.finditer(sql))


def literal_targets(sql: str) -> set[str]:
    """The states an SQL text writes as literals (in SET clauses; for an INSERT, its values)."""
    found: set[str] = set()
    for match in UPDATE_SET.finditer(sql):
        for value in STATE_VALUE.finditer(match.group(2)):
            found |= set(LITERAL.findall(value.group(1)))
    for match in INSERT.finditer(sql):
        columns = re.search(r"\(([^)]*)\)", sql[match.end() :])
        if columns and re.search(r"\bstate\b", columns.group(1)):
            rest = sql[match.end() + columns.end() :]
            values = re.split(r"\bFROM\b|\bON CONFLICT\b", rest, maxsplit=1)[0]
            found |= set(LITERAL.findall(values))
    return found


GUARD = (
    r"state\s*(NOT\s+IN|IN|<>|=)\s*(\([^)]*\)|'\w+'|ANY\s*\([^)]*\))"
)


def _guarded(where: str, alias: str | None, every: set[str]) -> set[str] | None:
    """The states a WHERE clause lets a row leave (the union of its state conditions on the
    changed table), every state without one; None when a parameter decides."""
    prefix = rf"(?:\b{alias}\.|(?<![\w.]))" if alias else r"(?<![\w.])"
    leaving: set[str] = set()
    conditions = list(re.finditer(prefix + GUARD, where, re.I))
    if not conditions:
        return set(every)
    for condition in conditions:
        op, value = condition.group(1).upper().split(), condition.group(2)
        if value.upper().startswith("ANY"):
            return None
        listed = set(LITERAL.findall(value))
        leaving |= (every - listed) if op[0] in ("NOT", "<>") else listed
    return leaving


def literal_sources(sql: str, every: set[str]) -> set[str | None] | None:
    """The states an SQL text may move a row from, read from its guards (None: a new row)."""
    found: set[str | None] = set()
    for match in UPDATE_SET.finditer(sql):
        if not ASSIGNS_STATE.search(match.group(2)):
            continue
        alias = re.match(rf"UPDATE\s+{STATE_TABLES}\s+(?:AS\s+)?(\w+)\s+SET", match.group(0), re.I)
        rest = sql[match.end() :]
        where = re.search(r"\bWHERE\b(.*?)(?=\bRETURNING\b|$)", rest, re.S | re.I)
        guarded = _guarded(where.group(1) if where else "", alias and alias.group(1), every)
        if guarded is None:
            return None
        found |= guarded
    if INSERT.search(sql):
        found.add(None)
        conflict = re.search(r"\bDO\s+UPDATE\s+SET\b(.*?)(?:\bWHERE\b(.*))?$", sql, re.S | re.I)
        if conflict and ASSIGNS_STATE.search(conflict.group(1)):
            alias = re.search(rf"INSERT\s+INTO\s+{STATE_TABLES}\s+AS\s+(\w+)", sql, re.I)
            guarded = _guarded(conflict.group(2) or "", alias and alias.group(1), every)
            if guarded is None:
                return None
            found |= guarded
    return found


def _declared_targets(change: StateChange) -> set[str]:
    return {target.value for made in change.moves.values() for _, target in made}


def test_the_table_speaks_of_every_state() -> None:
    for state in JobState:
        assert any(t.entity == "job" and t.target == state for t in lifecycle.TRANSITIONS)
    for line_state in LineState:
        assert any(t.entity == "line" and t.target == line_state for t in lifecycle.TRANSITIONS)
    assert set(JobState) == OPEN_JOB_STATES | FINAL_JOB_STATES
    assert not OPEN_JOB_STATES & FINAL_JOB_STATES
    assert set(get_args(lifecycle.JobStateField)) == set(JobState)
    assert set(get_args(lifecycle.FinalJobState)) == FINAL_JOB_STATES


def test_every_state_changing_statement_is_registered() -> None:
    found = _statements()
    assert len(found) >= 10, "too few statements found: the test would prove nothing"
    registered = {change.sql for change in STATE_CHANGES.values()}
    assert [where for where, sql in found if sql not in registered] == []


@pytest.mark.parametrize("name", sorted(STATE_CHANGES) or ["none"])
def test_every_registered_move_is_allowed(name: str) -> None:
    change = STATE_CHANGES[name]
    assert change.moves, f"{name} declares no move"
    assert forbidden(change) == []


@pytest.mark.parametrize("name", sorted(STATE_CHANGES) or ["none"])
def test_the_states_a_statement_writes_are_the_ones_it_declares(name: str) -> None:
    change = STATE_CHANGES[name]
    assert literal_targets(change.sql) <= _declared_targets(change)


@pytest.mark.parametrize("name", sorted(STATE_CHANGES) or ["none"])
def test_the_states_a_statement_leaves_are_the_ones_it_declares(name: str) -> None:
    change = STATE_CHANGES[name]
    every = {s.value for s in (JobState if change.entity == "job" else LineState)}
    leaving = literal_sources(change.sql, every)
    if leaving is None:  # a parameter decides; reopen_jobs checks it against the table
        return
    declared = {None if s is None else s.value for made in change.moves.values() for s, _ in made}
    assert leaving <= declared


def test_a_forbidden_move_is_caught() -> None:
    """The checks can fail: a tracker that re-opens a done job, a force-done of a failed job."""
    reopen = StateChange(
        "bad",
        "UPDATE woo_customer_sync_queue SET state = 'processing' WHERE state = 'done'",
        "job",
        {Actor.TRACKER: moves((JobState.DONE,), (JobState.PROCESSING,))},
    )
    assert forbidden(reopen) == [(Actor.TRACKER, (JobState.DONE, JobState.PROCESSING))]
    force = StateChange(
        "bad",
        "",
        "job",
        {Actor.API_FORCE_DONE: moves((JobState.FAILED,), (JobState.DONE,))},
    )
    assert forbidden(force) != []
    # A statement that writes a state it does not declare.
    sneaky = "UPDATE woo_customer_sync_queue SET state = 'failed', updated_at = now() WHERE id = $1"
    assert literal_targets(sneaky) == {"failed"}
    assert _writes_state(sneaky)
    # A guard that lets a row leave more states than declared is seen.
    every = {s.value for s in JobState}
    assert literal_sources(sneaky, every) == every
    guarded = sneaky.replace("WHERE id = $1", "WHERE id = $1 AND state NOT IN ('done', 'failed')")
    assert literal_sources(guarded, every) == {
        "draft",
        "queued",
        "processing",
        "paused",
        "cancelled",
    }
    # And one that is not registered at all is found by the scan.
    assert sneaky not in {c.sql for c in STATE_CHANGES.values()}


def test_reopen_refuses_a_move_the_table_does_not_allow() -> None:
    import asyncio

    async def run() -> None:
        await lifecycle.reopen_jobs(
            None,  # type: ignore[arg-type]  # refused before any statement runs
            Actor.REPLAY,
            [],
            to=JobState.PROCESSING,
            leaving=[JobState.DONE],
        )

    with pytest.raises(ValueError, match="may not move"):
        asyncio.run(run())


def test_every_migration_that_changes_states_is_registered() -> None:
    changing = {}
    for path in sorted((ROOT / "migrations").glob("*.up.sql")):
        sql = re.sub(r"--[^\n]*", "", path.read_text())
        if any(ASSIGNS_STATE.search(m.group(2)) for m in UPDATE_SET.finditer(sql)):
            changing[path.name.removesuffix(".up.sql")] = sql
    assert "0009_one_connection_per_store" in changing
    assert set(changing) == set(lifecycle.MIGRATION_CHANGES)
    for name, sql in changing.items():
        change = lifecycle.MIGRATION_CHANGES[name]
        assert forbidden(change) == []
        assert literal_targets(sql) <= _declared_targets(change)


def test_no_state_is_spelled_outside_the_lifecycle() -> None:
    """The issue's grep: a state literal in Python lives in shared/lifecycle.py, or is no state."""
    states = "|".join(sorted({s.value for s in JobState} | {s.value for s in LineState}))
    found = subprocess.run(
        ["grep", "-rnE", f"['\"]({states})['\"]", "services", "shared", "woosync"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.splitlines()
    # Not states: a status's counts of customers (``done``, ``failed``, ``pending``) as keys, on
    # the tracker's progress page too (the HTML ids of those counts, the keys its script reads,
    # and the CSS class of a failed bar).
    not_states = re.compile(
        r'"(done|failed)": done\.(done|failed)\b'
        r'|status\["(done|failed)"\]|final\.get\("(done|failed)"'
        r'|^services/tracker/sse\.py:\d+:(<dl>|<dt>|  for \(const k of|  el\("fill"\)\.className)'
        # A WooCommerce webhook's own status (active, paused, disabled), not a job state.
        r'|^shared/webhooks\.py:\d+:\s+elif status == "paused":'
        # A preview's categories of customers (``conflict`` among them), not line states.
        r'|^shared/preview\.py:\d+:(Category = Literal|    "conflict",|\s+result\.add\("conflict")'
    )
    left = [
        line
        for line in found
        if not line.startswith("shared/lifecycle.py:")
        and not line.lstrip().split(":", 2)[-1].lstrip().startswith("#")
        and not not_states.search(line)
    ]
    assert left == []


def test_the_diagram_in_the_docs_is_drawn_from_the_table() -> None:
    doc = (ROOT / "docs" / "architecture.md").read_text()
    for entity in ("job", "line"):
        assert f"```mermaid\n{lifecycle.mermaid(entity)}\n```" in doc, (
            f"docs/architecture.md: the {entity} diagram is not the table's; paste "
            f"python -c 'from shared.lifecycle import mermaid; print(mermaid(\"{entity}\"))'"
        )


def test_each_action_applies_in_every_state_its_moves_leave() -> None:
    # An action that the table lets leave a state must not be refused (409) in that state, nor
    # hidden by the jobs page.
    by_action = {
        "retry": Actor.API_RETRY,
        "replay": Actor.REPLAY,
        "pause": Actor.API_PAUSE,
        "resume": Actor.API_RESUME,
        "cancel": Actor.API_CANCEL,
    }
    assert set(lifecycle.JOB_ACTIONS) == set(by_action)
    for action, actor in by_action.items():
        sources = {
            s for t in TRANSITIONS if t.actor == actor and t.entity == "job" for s in t.sources
        }
        assert sources <= lifecycle.JOB_ACTIONS[action], action
    # The control actions always move a job: they apply only where the table lets them.
    for action in ("pause", "resume", "cancel"):
        sources = {
            s
            for t in TRANSITIONS
            if t.actor == by_action[action] and t.entity == "job"
            for s in t.sources
        }
        assert lifecycle.JOB_ACTIONS[action] == sources, action
