"""What a parked message is: its kind, its job and customers, read from its body and headers.

Pure: no broker, no database. :mod:`shared.parking` reads the queues with it, :mod:`shared.replay`
decides with it what goes back.

Kinds of parked messages (syncer parking queue)
-----------------------------------------------
* ``parked``: a batch of customers whose retries were spent (headers ``parked-attempts`` and
  ``parked-error``); their lines are ``failed``.
* ``rejected``: a valid batch the syncer refused for another reason (for instance a job that did
  not exist, or a bug), dead-lettered by the work queue without those headers.
* ``malformed``: a body that is not a valid batch (not JSON, wrong schema). Replay never moves
  these: the syncer would only refuse them again. They stay parked for an operator to read and
  purge in the management console.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal
from uuid import UUID

from shared import messages as m
from shared.consuming import Malformed, parse
from shared.topology import PARKED_ATTEMPTS_HEADER, PARKED_ERROR_HEADER

Kind = Literal["parked", "rejected", "malformed"]
QueueName = Literal["syncer", "fetcher", "tracker"]

_PREVIEW_BYTES = 80

# What each parking queue should hold: a body valid as one of these models can be replayed.
QUEUE_MODELS: dict[QueueName, tuple[type[m.Message], ...]] = {
    "syncer": (m.CustomerBatch,),
    "fetcher": (m.SyncRequested,),
    "tracker": (m.LinesDone, m.LinesFailed, m.FetchCompleted, m.FetchFailed),
}


@dataclass(frozen=True)
class ParkedMessage:
    """One message of a parking queue, as ``woosync dlq list`` shows it."""

    message_id: str | None
    kind: Kind
    job_id: UUID | None = None
    org_id: UUID | None = None
    woo_ids: tuple[int, ...] = ()
    customers: int = 0
    attempts: int | None = None
    error: str | None = None
    detail: str | None = None  # for malformed messages: why, and the start of the body

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["job_id"] = str(self.job_id) if self.job_id else None
        data["org_id"] = str(self.org_id) if self.org_id else None
        data["woo_ids"] = list(self.woo_ids)
        return data


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _int(value: Any) -> int | None:
    try:
        return int(_text(value) or "")
    except ValueError:
        return None


def woo_id(customer: Mapping[str, Any]) -> int | None:
    value = customer.get("id")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _parse(body: bytes, models: Sequence[type[m.Message]]) -> m.Message | str:
    """The body as the model it is valid for, or why it is malformed (the consumers' decoder)."""
    try:
        return parse(body, models)
    except Malformed as exc:
        return str(exc)


def describe(
    body: bytes,
    headers: Mapping[str, Any] | None,
    message_id: str | None,
    models: Sequence[type[m.Message]] = (m.CustomerBatch,),
) -> tuple[ParkedMessage, m.Message | None]:
    """Classify one parked message (pure; see the module docstring for the kinds)."""
    headers = headers or {}
    parsed = _parse(body, models)
    if isinstance(parsed, str):
        preview = body[:_PREVIEW_BYTES].decode("utf-8", "replace")
        return ParkedMessage(message_id, "malformed", detail=f"{parsed}: {preview!r}"), None
    parked = PARKED_ATTEMPTS_HEADER in headers
    woo_ids: tuple[int, ...] = ()
    customers = 0
    if isinstance(parsed, m.CustomerBatch):
        customers = len(parsed.customers)
        woo_ids = tuple(w for c in parsed.customers if (w := woo_id(c)) is not None)
    info = ParkedMessage(
        message_id=message_id or str(parsed.message_id),
        kind="parked" if parked else "rejected",
        job_id=parsed.job_id,
        org_id=parsed.org_id,
        woo_ids=woo_ids,
        customers=customers,
        attempts=_int(headers.get(PARKED_ATTEMPTS_HEADER)) if parked else None,
        error=_text(headers.get(PARKED_ERROR_HEADER)),
    )
    return info, parsed


def matches(info: ParkedMessage, job_id: UUID | None, org_id: UUID | None) -> bool:
    if job_id is None and org_id is None:
        return True
    if info.kind == "malformed":
        return False
    return (job_id is None or info.job_id == job_id) and (org_id is None or info.org_id == org_id)
