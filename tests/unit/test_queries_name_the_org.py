"""The first wall between orgs: every service statement on org data names the org.

Row-level security (tests/integration/test_row_level_security.py) is the second wall; this keeps
the first one from eroding as statements are added.
"""

from __future__ import annotations

import re
from types import ModuleType

import pytest

from services.api import queries as api_queries
from services.fetcher import queries as fetcher_queries
from services.syncer import queries as syncer_queries
from services.tracker import queries as tracker_queries
from shared import activity, auth, jobs, lifecycle, replay

ORG_TABLES = re.compile(
    r"\b(orgs|api_keys|woo_connections|woo_customer_sync_queue(_line)?|woo_customer_sync_page"
    r"|woo_customer_sync_hold|woo_sync_activity|customer)\b"
)
# Statements that may span orgs, each for a stated reason.
EXEMPT = {
    "SELECT_JOB_ANY_ORG": "the operator's cross-org replay, run as the schema owner",
    "REVOKE_KEY": "the operator revokes a key by its id, run as the schema owner",
    "SELECT_KEYS": "lists one org's keys, or every org's for the operator (org_id IS NULL)",
    "INSERT_ORG": "creates the org itself: its id is the org",
}
# Naming the org: a condition on an org_id, or an insert that sets the org_id column.
NAMES_THE_ORG = re.compile(r"\borg_id\s*=|INSERT INTO \w+(\s+AS \w+)?\s*\([^)]*\borg_id\b")


def statements(module: ModuleType) -> list[tuple[str, str]]:
    return [
        (name, value)
        for name, value in vars(module).items()
        if name.isupper() and isinstance(value, str) and ORG_TABLES.search(value)
    ]


@pytest.mark.parametrize(
    "module",
    [
        api_queries,
        fetcher_queries,
        syncer_queries,
        tracker_queries,
        activity,
        auth,
        jobs,
        lifecycle,
        replay,
    ],
    ids=lambda m: m.__name__,
)
def test_every_statement_on_org_tables_names_the_org(module: ModuleType) -> None:
    found = statements(module)
    assert found, "no statements found: the test would prove nothing"
    unscoped = [
        name
        for name, sql in found
        if not NAMES_THE_ORG.search(sql) and "woosync_" not in sql and name not in EXEMPT
    ]
    assert unscoped == []
