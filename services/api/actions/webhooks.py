"""The ``webhooks-enable``, ``webhooks-disable`` and ``webhooks-status`` actions: a connection's
WooCommerce webhooks (``shared.webhooks``), for changes within seconds between full syncs.

Enable registers ``customer.created``, ``customer.updated`` and ``customer.deleted`` on the store
(``POST /wc/v3/webhooks``, which needs a key of a user with ``manage_woocommerce`` and write
permission), each delivering to ``WOOSYNC_PUBLIC_WEBHOOK_URL`` + a path of its own, with a secret
woosync generates and keeps encrypted; it is idempotent (what exists and is active is kept).
Disable deletes them from the store. Status shows what woosync knows, never a secret or a token.
"""

from __future__ import annotations

import asyncpg
from pydantic import SecretStr

from services.api.actions.common import Answer
from services.api.actions.preview import connection_not_found
from services.api.deps import Deps
from services.api.errors import ApiError
from services.api.schemas import (
    StoreConfigIn,
    WebhookOut,
    WebhooksDisableRequest,
    WebhooksEnableRequest,
    WebhooksResult,
    WebhooksStatusRequest,
)
from services.api.store_probe import check_store_url, store_failure
from shared import webhooks
from shared.auth import Caller
from shared.crypto import UndecryptableSecret
from shared.woocommerce.errors import StoreError

ENABLE_SUMMARY = "Register the store's customer webhooks, delivering to woosync (idempotent)."
DISABLE_SUMMARY = "Remove the connection's webhooks from the store."
STATUS_SUMMARY = "The connection's webhooks as woosync last saw them."


async def _store(deps: Deps, caller: Caller, connection_id: object) -> StoreConfigIn:
    try:
        config = await webhooks.store_config(
            deps.pool,
            deps.secrets,
            caller.org_id,
            connection_id,  # type: ignore[arg-type]
        )
    except webhooks.ConnectionNotFound:
        raise connection_not_found() from None
    except UndecryptableSecret:
        raise ApiError(
            409,
            "connection_secret_unreadable",
            "the connection's stored secret cannot be decrypted with the current keys",
        ) from None
    store = StoreConfigIn.model_construct(
        url=config.url,
        consumer_key=config.consumer_key,
        consumer_secret=SecretStr(config.consumer_secret.get_secret_value()),
        auth=config.auth,
        verify_tls=config.verify_tls,
    )
    await check_store_url(deps, store.url)
    return store


async def _result(deps: Deps, caller: Caller, connection_id: object) -> WebhooksResult:
    found = await webhooks.states(deps.pool, caller.org_id, connection_id)  # type: ignore[arg-type]
    return WebhooksResult(
        connection_id=connection_id,  # type: ignore[arg-type]
        webhooks=[
            WebhookOut(
                topic=s.topic,
                woo_webhook_id=s.woo_webhook_id,
                status=s.status,
                reenabled_count=s.reenabled_count,
            )
            for s in found
        ],
    )


async def enable(request: WebhooksEnableRequest, caller: Caller, deps: Deps) -> Answer:
    store = await _store(deps, caller, request.connection_id)
    try:
        async with deps.store_reader(store, 1) as client:
            await webhooks.enable(
                deps.pool,
                client,
                deps.secrets,
                org_id=caller.org_id,
                connection_id=request.connection_id,
                public_base=deps.settings.webhook_base(),
                actor=caller.actor(),
            )
    except StoreError as exc:
        raise store_failure(exc, store) from None
    except asyncpg.UniqueViolationError:
        raise ApiError(
            409,
            "connection_busy",
            "the connection's webhooks are being registered by another request; try again",
        ) from None
    return Answer(await _result(deps, caller, request.connection_id))


async def disable(request: WebhooksDisableRequest, caller: Caller, deps: Deps) -> Answer:
    store = await _store(deps, caller, request.connection_id)
    try:
        async with deps.store_reader(store, 1) as client:
            await webhooks.disable(
                deps.pool,
                client,
                org_id=caller.org_id,
                connection_id=request.connection_id,
                actor=caller.actor(),
            )
    except StoreError as exc:
        raise store_failure(exc, store) from None
    return Answer(await _result(deps, caller, request.connection_id))


async def status(request: WebhooksStatusRequest, caller: Caller, deps: Deps) -> Answer:
    try:
        await webhooks.store_config(deps.pool, deps.secrets, caller.org_id, request.connection_id)
    except webhooks.ConnectionNotFound:
        raise connection_not_found() from None
    except UndecryptableSecret:
        pass  # the status needs no store
    return Answer(await _result(deps, caller, request.connection_id))
