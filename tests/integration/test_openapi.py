"""The OpenAPI document at /openapi.json against the live api, with schemathesis.

The api runs as its own process (``python -m services.api``, uvicorn) on this test's database and
broker namespace, in front of a simulated store. Schemathesis generates requests for every
operation from the document, valid and invalid, sends them with a valid key, and checks each
answer: no 5xx, a documented status code, content type and headers, and a body that matches the
documented schema. Valid requests are steered towards the org of the key, the simulator and a
real job some of the time, so that they get past 403 and 404 into the actions themselves.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from services.api.app import (
    CONNECTION_PATH,
    CONNECTIONS_PATH,
    JOB_PATH,
    PREVIEW_PATH,
    SYNC_PATH,
    WEBHOOK_PATH,
)
from shared.paths import (
    CONFLICTS_PATH,
    JOB_ACTIVITY_PATH,
    JOB_LINES_PATH,
    JOBS_PATH,
    ORCHESTRATE_PATH,
    SCHEDULE_PATH,
    SCHEDULES_PATH,
)
from shared.settings import Settings
from tests.helpers import free_port
from tools.woosim.testing import SimHandle, spawn_simulator

EXAMPLES = 60  # per operation and generation mode: about 30 s in all on a 2-core machine
START_TIMEOUT_S = 30.0
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@dataclass(frozen=True)
class LiveApi:
    url: str
    key: str
    org_id: str
    job_id: str
    connection_id: str
    store: SimHandle

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def _wait_healthy(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        assert process.poll() is None, "the api exited during startup"
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("the api did not become ready")


@pytest.fixture
def live_api(settings: Settings) -> Iterator[LiveApi]:
    port = free_port()
    env = {
        **os.environ,
        "WOOSYNC_DATABASE_URL": settings.database_url,
        "WOOSYNC_AMQP_URL": settings.amqp_url,
        "WOOSYNC_NAMESPACE": settings.namespace,
        "WOOSYNC_SECRET_KEY": settings.secret_key.get_secret_value(),
        "WOOSYNC_API_PORT": str(port),
        "WOOSYNC_ALLOW_PRIVATE_URLS": "true",  # the simulator listens on 127.0.0.1
        "WOOSYNC_RATE_LIMIT_PER_MINUTE": "100000",
        "WOOSYNC_RATE_LIMIT_BURST": "100000",
        "WOOSYNC_REFUSED_KEY_LIMIT_BURST": "100000",
        "WOOSYNC_MAX_CONCURRENT_SYNCS_PER_ORG": "2",  # so that 429 too_many_syncs happens too
        "WOOSYNC_LOG_LEVEL": "WARNING",
    }
    created = subprocess.run(
        [sys.executable, "-m", "woosync.cli", "org", "create", "conformance"],
        env={**env, "WOOSYNC_ADMIN_DATABASE_URL": settings.admin_database_url},
        capture_output=True, text=True, timeout=60, check=True,
    )
    org = json.loads(created.stdout)
    url = f"http://127.0.0.1:{port}"
    with spawn_simulator(customers=3, seed=5) as store:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.api"], env=env, stderr=subprocess.PIPE
        )
        try:
            _wait_healthy(url, process)
            auth = {"Authorization": f"Bearer {org['api_key']}"}
            body = {
                "action": "start",
                "org_id": org["org_id"],
                "config": {
                    "url": store.url,
                    "consumer_key": store.consumer_key,
                    "consumer_secret": store.consumer_secret,
                    "auth": "oauth1",
                },
            }
            started = httpx.post(url + SYNC_PATH, json=body, headers=auth, timeout=30)
            assert started.status_code == 202, started.text
            job = httpx.get(started.json()["status_url"], headers=auth, timeout=30).json()
            yield LiveApi(
                url,
                org["api_key"],
                org["org_id"],
                started.json()["job_id"],
                job["connection_id"],
                store,
            )
        finally:
            process.terminate()
            _, stderr = process.communicate(timeout=30)
            print(stderr.decode(errors="replace")[-5000:])  # shown by pytest on failure


def _steer(case: Any, live: LiveApi) -> None:
    """Point a valid request at this org, and some of them at the simulator and a real job."""
    body = case.body
    if isinstance(body, dict):
        if "org_id" in body:
            body["org_id"] = live.org_id
        if isinstance(body.get("job_id"), str) and body["job_id"][:1] in "01234567":
            body["job_id"] = live.job_id
        config = body.get("config")
        if isinstance(config, dict) and isinstance(config.get("consumer_key"), str):
            size = len(config["consumer_key"])
            if size % 4 != 3:
                # Three spellings of the simulator's address: three store connections, so that
                # a start can be new (202), answered by the open job (200) or over the cap (429).
                host = ("127.0.0.1", "localhost", "[::ffff:127.0.0.1]")[size % 3]
                config["url"] = live.store.url.replace("127.0.0.1", host)
            if size % 4 in (0, 1):
                config["consumer_key"] = live.store.consumer_key
                config["consumer_secret"] = live.store.consumer_secret
        key = body.get("consumer_key")
        if "config" not in body and isinstance(key, str) and len(key) % 2 == 0:
            # New credentials for the connection (PATCH): the store's own, some of the time.
            body["consumer_key"] = live.store.consumer_key
            body["consumer_secret"] = live.store.consumer_secret
    path_parameters = case.path_parameters
    if path_parameters and str(path_parameters.get("job_id", ""))[:1] in "01234567":
        path_parameters["job_id"] = live.job_id
    if path_parameters and str(path_parameters.get("connection_id", ""))[:1] in "01234567":
        # The job above is never read (no fetcher runs): a delete answers 409 until a
        # generated force-done closes it.
        path_parameters["connection_id"] = live.connection_id


def _exchange(
    operation: Any, mode: GenerationMode, live: LiveApi, seen: dict[str, set[int]]
) -> None:
    """Send EXAMPLES generated requests of one operation and check every answer."""

    @hypothesis_settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,  # the same requests every run: a failure is reproducible
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(mode, headers=live.auth))
    def exchange(case: Any) -> None:
        if mode == GenerationMode.POSITIVE:
            _steer(case, live)
        response = case.call_and_validate(
            base_url=live.url, headers=live.auth, checks=CHECKS, timeout=30
        )
        seen.setdefault(case.operation.label, set()).add(response.status_code)

    try:
        exchange()
    except Unsatisfiable:
        # Nothing of a parameterless operation (the health checks) can be made invalid.
        assert mode == GenerationMode.NEGATIVE, operation.label


def test_every_operation_answers_as_documented(live_api: LiveApi) -> None:
    document = httpx.get(f"{live_api.url}/openapi.json", headers=live_api.auth).json()
    assert document["openapi"].startswith("3.1")
    request_body = document["paths"][SYNC_PATH]["post"]["requestBody"]
    actions = request_body["content"]["application/json"]["schema"]
    assert set(actions["discriminator"]["mapping"]) == {
        "start", "status", "retry", "force-done", "replay", "pause", "resume", "cancel",
        "resolve-conflicts", "webhooks-enable", "webhooks-disable", "webhooks-status",
    }
    assert len(actions["oneOf"]) == 12

    schema = schemathesis.openapi.from_url(
        f"{live_api.url}/openapi.json", headers=live_api.auth, timeout=10
    )
    operations = [result.ok() for result in schema.get_all_operations()]
    # Schemathesis leaves out the document's own operation; loading it above exercised it.
    assert {op.label for op in operations} == {
        "GET /healthz",
        "GET /readyz",
        "GET /asyncapi.json",
        "GET /metrics",
        f"POST {SYNC_PATH}",
        f"GET {JOB_PATH}",
        f"GET {CONNECTIONS_PATH}",
        f"GET {CONNECTION_PATH}",
        f"PATCH {CONNECTION_PATH}",
        f"DELETE {CONNECTION_PATH}",
        f"POST {PREVIEW_PATH}",
        f"POST {ORCHESTRATE_PATH}",
        f"GET {JOBS_PATH}",
        f"GET {JOB_LINES_PATH}",
        f"GET {JOB_ACTIVITY_PATH}",
        f"GET {CONFLICTS_PATH}",
        f"POST {WEBHOOK_PATH}",
        f"PUT {SCHEDULE_PATH}",
        f"GET {SCHEDULE_PATH}",
        f"DELETE {SCHEDULE_PATH}",
        f"GET {SCHEDULES_PATH}",
    }
    seen: dict[str, set[int]] = {}
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _exchange(operation, mode, live_api, seen)

    # The run reached the actions, not only the validation in front of them.
    statuses = seen[f"POST {SYNC_PATH}"]
    assert {200, 422} <= statuses, statuses
    assert statuses & {202, 404, 409, 429}, statuses
    assert {200, 404} <= seen[f"GET {JOB_PATH}"], seen
    assert {200, 404} <= seen[f"GET {CONNECTION_PATH}"], seen
    assert {200, 422} <= seen[f"PATCH {CONNECTION_PATH}"], seen
    # 409 while the job is open, 200 once a force-done closed it (the order is hypothesis's).
    deletes = seen[f"DELETE {CONNECTION_PATH}"]
    assert 404 in deletes and deletes & {200, 409}, seen
    assert 200 in seen[f"GET {CONNECTIONS_PATH}"], seen
    assert {200, 422} <= seen[f"POST {PREVIEW_PATH}"], seen
    assert {404, 422} <= seen[f"POST {ORCHESTRATE_PATH}"], seen
    assert {200, 422} <= seen[f"GET {JOBS_PATH}"], seen
    for path in (JOB_LINES_PATH, JOB_ACTIVITY_PATH):
        assert {200, 404, 422} <= seen[f"GET {path}"], seen
    assert {200, 404, 422} <= seen[f"GET {CONFLICTS_PATH}"], seen
