"""``woosync connections``: the operator's commands over the real database and simulator, run as
the real command (a process of its own)."""

from __future__ import annotations

import json
from uuid import UUID, uuid4

from shared.auth import create_org
from shared.crypto import SecretBox
from tests.factories import add_customers
from tests.helpers import Api, woosync, woosync_run
from tools.woosim.testing import SimHandle

BOX = SecretBox("test-secret-key")


async def test_the_operator_lists_shows_updates_and_deletes_a_connection(
    api: Api, store: SimHandle
) -> None:
    settings = api.settings
    env = {
        "WOOSYNC_SECRET_KEY": settings.secret_key.get_secret_value(),
        "WOOSYNC_ALLOW_PRIVATE_URLS": "true",
    }
    answer = await api.start(store)
    assert answer.status_code == 202, answer.text
    job_id = UUID(answer.json()["job_id"])
    connection_id = await api.pool.fetchval(
        "SELECT connection_id FROM woo_customer_sync_queue WHERE id = $1", job_id
    )
    await add_customers(api.pool, job_id, [1, 2])
    other_org, _ = await create_org(api.pool, "other")

    listed = [
        json.loads(line)
        for line in (await woosync(settings, "connections", "list")).split("\n")
        if line
    ]
    assert [(c["org_id"], c["connection_id"]) for c in listed] == [
        (str(api.org_id), str(connection_id))
    ]
    assert listed[0]["customers"] == 2 and listed[0]["open_job_id"] == str(job_id)
    assert await woosync(settings, "connections", "list", "--org", str(other_org)) == ""
    shown = json.loads(await woosync(settings, "connections", "show", str(connection_id)))
    assert shown == listed[0]
    for output in (json.dumps(listed), json.dumps(shown)):
        assert store.consumer_secret not in output and store.consumer_key not in output
    code, _, err = await woosync_run(settings, "connections", "show", str(uuid4()))
    assert (code, err.strip()) == (1, "error: connection_not_found: no such store connection")

    # New credentials: refused by the store, nothing changes; accepted, stored and audited.
    new_key, new_secret = await store.add_key()
    before = await api.pool.fetchrow("SELECT * FROM woo_connections WHERE id = $1", connection_id)
    update = ("connections", "update", str(connection_id), "--consumer-key", new_key)
    code, out, err = await woosync_run(
        settings, *update, "--secret-stdin", stdin="cs_wrong\n", **env
    )
    assert code == 1 and "store_credentials_refused" in err and out == "", err
    assert (
        await api.pool.fetchrow("SELECT * FROM woo_connections WHERE id = $1", connection_id)
        == before
    )
    code, out, err = await woosync_run(
        settings, *update, "--secret-stdin", stdin=new_secret + "\n", **env
    )
    assert code == 0, err
    assert json.loads(out)["consumer_key_ending"] == new_key[-4:]
    assert new_secret not in out + err and new_key not in out
    after = await api.pool.fetchrow("SELECT * FROM woo_connections WHERE id = $1", connection_id)
    assert after["consumer_key"] == new_key
    assert BOX.decrypt(after["consumer_secret_enc"]) == new_secret
    audit = await api.pool.fetchrow(
        "SELECT details FROM woo_sync_activity WHERE event = 'connection.credentials_updated'"
    )
    assert audit["details"]["by"] == "cli" and new_secret not in json.dumps(audit["details"])

    # Deleting: refused while its job is open; then with its customers.
    code, _, err = await woosync_run(settings, "connections", "delete", str(connection_id))
    assert code == 1 and "connection_busy" in err, err
    await api.pool.execute(
        "UPDATE woo_customer_sync_queue SET state = 'done', finished_at = now() WHERE id = $1",
        job_id,
    )
    deleted = json.loads(
        await woosync(settings, "connections", "delete", str(connection_id), "--with-customers")
    )
    assert (deleted["customers_deleted"], deleted["jobs_deleted"]) == (2, 1)
    assert await api.pool.fetchval("SELECT count(*) FROM woo_connections") == 0
    assert await api.pool.fetchval("SELECT count(*) FROM customer") == 0
    audit = await api.pool.fetchrow(
        "SELECT details FROM woo_sync_activity WHERE event = 'connection.deleted'"
    )
    assert audit["details"]["by"] == "cli" and audit["details"]["with_customers"] is True
