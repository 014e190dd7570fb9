"""Receiving a store's webhook deliveries: ``POST .../woocommerce/webhooks/{token}``.

No API key (WooCommerce cannot send one): the token in the URL names one of our webhooks
(migration 0019) and the ``X-WC-Webhook-Signature`` over the raw body proves the delivery
(``shared.woocommerce.webhooks``). The answer is fast: a verified change is handed to the broker
as ``customer.changed`` and the syncer applies it, idempotently (``services.syncer.changes``).

=====================================================  ==========================================
delivery                                               answer
=====================================================  ==========================================
unknown token                                          404 ``not_found`` (nothing else said)
the creation ping (form body ``webhook_id=N``, no      200 (a ping carries no signature)
signature)
missing or wrong signature                             401 ``invalid_signature``
signed, but no customer in it (WooCommerce's REST      200 ``ignored``: the customer is gone, a
error body for a customer deleted before sending)      ``customer.deleted`` or the full sync says so
signed change                                          200 ``accepted``, published first
broker unavailable                                     503: WooCommerce counts a failure and never
                                                       retries; the full sync reconciles
=====================================================  ==========================================
"""

from __future__ import annotations

import logging
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from services.api.errors import ApiError
from services.api.publishing import publish_all
from services.api.web import MAX_BODY_BYTES, deps_of, guarded, read_bounded
from shared import jsondepth
from shared.crypto import UndecryptableSecret
from shared.logs import log_context
from shared.messages import CustomerChanged
from shared.woocommerce.webhooks import SIGNATURE_HEADER, hash_token, signature_valid

log = logging.getLogger("woosync.api.webhooks")

# Webhook tokens are URL-safe base64 of 32 bytes; anything else is not ours, without a lookup.
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{20,100}$")
_PING_RE = re.compile(rb"^webhook_id=\d{1,19}$")

SELECT_BY_TOKEN = (
    "SELECT id, org_id, connection_id, topic, woo_webhook_id, secret_enc "
    "FROM woosync_webhook_by_token($1)"
)


def _not_found() -> ApiError:
    return ApiError(404, "not_found", "no such webhook")


def change_of(
    topic: str, body: bytes, *, org_id: Any, connection_id: Any
) -> CustomerChanged | None:
    """The change a verified delivery carries, or None when it carries no customer."""
    try:
        payload = jsondepth.loads(body)
    except ValueError:
        return None
    if not isinstance(payload, dict):
        return None
    woo_id = payload.get("id")
    if not isinstance(woo_id, int) or isinstance(woo_id, bool) or not 1 <= woo_id < 2**63:
        return None
    event = topic.split(".", 1)[1]
    if event == "deleted":
        return CustomerChanged(
            org_id=org_id, connection_id=connection_id, event="deleted", woo_id=woo_id
        )
    customer = {key: value for key, value in payload.items() if key != "_links"}
    return CustomerChanged(
        org_id=org_id,
        connection_id=connection_id,
        event=event,  # type: ignore[arg-type]  # created or updated: the CHECKed topic column
        woo_id=woo_id,
        customer=customer,
    )


@guarded
async def receive(request: Request) -> Response:
    deps = deps_of(request)
    token = str(request.path_params.get("token", ""))
    body = await read_bounded(request, MAX_BODY_BYTES)
    if not _TOKEN_RE.match(token):
        raise _not_found()
    row = await deps.pool.fetchrow(SELECT_BY_TOKEN, hash_token(token))
    if row is None:
        raise _not_found()
    with log_context(org_id=row["org_id"]):
        signature = request.headers.get(SIGNATURE_HEADER)
        if signature is None and _PING_RE.match(body.strip()):
            log.info("webhook ping for %s of connection %s", row["topic"], row["connection_id"])
            return JSONResponse({"status": "ok"})
        try:
            secret = deps.secrets.decrypt(row["secret_enc"])
        except UndecryptableSecret:
            log.error("webhook secret of connection %s is unreadable", row["connection_id"])
            raise ApiError(401, "invalid_signature", "the signature is missing or wrong") from None
        if not signature_valid(secret, body, signature):
            log.warning(
                "webhook delivery for %s of connection %s refused: bad signature",
                row["topic"],
                row["connection_id"],
            )
            raise ApiError(401, "invalid_signature", "the signature is missing or wrong")
        change = change_of(
            row["topic"], body, org_id=row["org_id"], connection_id=row["connection_id"]
        )
        if change is None:
            log.info("webhook %s delivery without a customer: ignored", row["topic"])
            return JSONResponse({"status": "ignored"})
        await publish_all(deps, [change], context="webhook change")
        log.info(
            "webhook %s of customer %s accepted (delivery %s)",
            row["topic"],
            change.woo_id,
            request.headers.get("x-wc-webhook-delivery-id", "-")[:64],
        )
        return JSONResponse({"status": "accepted"})
