"""The progress stream slows down an address that keeps sending refused keys or tokens."""

from __future__ import annotations

import asyncpg
import httpx

from shared.auth import create_org
from shared.settings import Settings
from tests.factories import make_job
from tests.helpers import serving_tracker, tokens_for

WAIT_S = 10.0


async def test_refused_keys_and_tokens_are_rate_limited_per_client_address(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    limited = settings.model_copy(
        update={"refused_key_limit_per_minute": 6, "refused_key_limit_burst": 3}
    )
    org_id, key = await create_org(pool, "acme")
    job_id = await make_job(pool, org_id, state="done")
    tokens = tokens_for(limited)
    async with serving_tracker(limited) as base, httpx.AsyncClient(timeout=WAIT_S) as client:
        url = f"{base}/api/v1/integrations/sync/progress/{job_id}"
        guesses = [
            await client.get(url),
            await client.get(url, headers={"Authorization": "Bearer wsk_not-a-key"}),
            await client.get(url, params={"token": "forged"}),
        ]
        assert [r.status_code for r in guesses] == [401, 401, 401]
        # The address has spent its refusals: even good credentials wait now.
        for attempt in (
            {"headers": {"Authorization": f"Bearer {key}"}},
            {"params": {"token": tokens.issue(job_id, org_id)}},
        ):
            response = await client.get(url, **attempt)
            assert response.status_code == 429, response.text
            assert response.json()["error"]["code"] == "rate_limited"
            assert response.headers["retry-after"] == "10"
        assert (await client.get(f"{base}/healthz")).status_code == 200
