"""The api and the tracker serve the AsyncAPI document of the running deployment (its namespace,
its retry tiers) at /asyncapi.json, to a caller with an API key only."""

from __future__ import annotations

import httpx
import pytest

from services.asyncapi import document
from tests.helpers import Api, serving_tracker

WAIT_S = 30.0


async def test_the_api_serves_the_document_for_a_key(api: Api) -> None:
    refused = await api.client.get("/asyncapi.json")
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
    answer = await api.get("/asyncapi.json")
    assert answer.status_code == 200, answer.text
    served = answer.json()
    assert served == document(api.settings)
    addresses = {channel["address"] for channel in served["channels"].values()}
    assert f"{api.settings.namespace}.syncer.customer-batch" in addresses  # this deployment's
    assert (await api.get("/asyncapi.json")).json() == served  # kept, not rebuilt differently


@pytest.mark.parametrize("key", [None, "wsk_not-a-key"])
async def test_the_tracker_serves_it_for_a_key_only(api: Api, key: str | None) -> None:
    async with serving_tracker(api.settings) as base, httpx.AsyncClient(timeout=WAIT_S) as client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        refused = await client.get(f"{base}/asyncapi.json", headers=headers)
        assert refused.status_code == 401, refused.text
        answer = await client.get(
            f"{base}/asyncapi.json", headers={"Authorization": f"Bearer {api.key}"}
        )
    assert answer.status_code == 200, answer.text
    assert answer.json() == document(api.settings)
