"""The message contract: every message that crosses RabbitMQ, as a pydantic model.

Messages carry ids and customer data, never store credentials: a consumer loads the connection
it needs from PostgreSQL. Every message names its own routing key, so publishers cannot route a
model to the wrong place, and ``schema_version`` lets a consumer reject what it does not know.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar, Literal
from uuid import UUID, uuid4

from pydantic import BaseModel, ConfigDict, Field, GetJsonSchemaHandler

from shared.lifecycle import FinalJobState

SCHEMA_VERSION = 1


def utcnow() -> datetime:
    return datetime.now(UTC)


class Envelope(BaseModel):
    """What every message carries: its version, its id, its org and when it was sent."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    routing_key: ClassVar[str]

    schema_version: Literal[1] = SCHEMA_VERSION
    message_id: UUID = Field(default_factory=uuid4)
    org_id: UUID
    occurred_at: datetime = Field(default_factory=utcnow)


class Message(Envelope):
    """A message about one job (every message but the webhooks' ``customer.changed``)."""

    job_id: UUID


class SyncRequested(Message):
    """api -> fetcher: page through this job's store. Redelivery resumes where it stopped."""

    routing_key: ClassVar[str] = "sync.requested"
    connection_id: UUID
    reason: Literal["start", "retry"] = "start"


class CustomerBatch(Message):
    """fetcher -> syncer: customers exactly as the store sent them (minus ``_links``): those of
    one page, or of the few pages a crawl recorded at once (``page`` is then the first of them).

    The attempt number travels in the ``retry-attempt`` header, not here, so the body of a batch
    is the same on every delivery and replay.
    """

    routing_key: ClassVar[str] = "customer.batch"
    connection_id: UUID
    page: int | None = None  # None for batches re-published by retry or replay
    customers: list[dict[str, Any]]


class CustomerChanged(Envelope):
    """api -> syncer: one change a store's webhook delivered, signature verified; no job.

    ``customer`` is the body of a ``customer.created`` / ``customer.updated`` delivery (the
    customer as ``GET /customers/{id}`` returns it at send time, minus ``_links``); None for
    ``deleted``, whose body is only the id. ``occurred_at`` is when the api received it: a delete
    applies only if it is not older than the stored version's ``date_modified_gmt``. Deliveries
    are at least once and out of order, so the syncer applies them idempotently.
    """

    routing_key: ClassVar[str] = "customer.changed"
    connection_id: UUID
    event: Literal["created", "updated", "deleted"]
    woo_id: int
    customer: dict[str, Any] | None = None


class LineFailure(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    woo_id: int
    error: str
    attempts: int


class LinesDone(Message):
    """syncer -> tracker: these lines are committed as ``done``."""

    routing_key: ClassVar[str] = "line.done"
    woo_ids: list[int]


class LinesFailed(Message):
    """syncer -> tracker: these lines failed for good (retries exhausted, now parked)."""

    routing_key: ClassVar[str] = "line.failed"
    failures: list[LineFailure]


class FetchCompleted(Message):
    """fetcher -> tracker: every page is read and every line recorded; the job can finish."""

    routing_key: ClassVar[str] = "fetch.completed"
    pages: int
    customers: int


class FetchFailed(Message):
    """fetcher -> tracker: the store refused us or kept failing; the job fails with this error."""

    routing_key: ClassVar[str] = "fetch.failed"
    error: str


class SyncCompleted(Message):
    """tracker -> anyone: the job reached a final state. Nothing in woosync consumes it yet."""

    routing_key: ClassVar[str] = "sync.completed"
    state: FinalJobState
    total: int
    done: int
    failed: int
    # Customers of the connection this job found gone from the store (marked deleted).
    deleted: int = 0


class Contract:
    """The message models a raw body carries, for FastStream's AsyncAPI document.

    A subscriber takes ``Annotated[bytes, Contract(Model, ...)]``: FastStream hands it the raw
    body (no validation, see ``shared.consuming.raw_body``) while the generated schema shows
    these models as the payload (``oneOf``: exactly one of them must match); a publisher of
    several models (a parking queue) declares the same as its schema.
    """

    def __init__(self, *models: type[BaseModel]) -> None:
        self.models = models

    def __get_pydantic_json_schema__(
        self, core_schema: Any, handler: GetJsonSchemaHandler
    ) -> dict[str, Any]:
        return {"oneOf": [handler(model.__pydantic_core_schema__) for model in self.models]}


ALL_MESSAGES: tuple[type[Envelope], ...] = (
    SyncRequested,
    CustomerBatch,
    CustomerChanged,
    LinesDone,
    LinesFailed,
    FetchCompleted,
    FetchFailed,
    SyncCompleted,
)

# What the tracker's queue carries (routing keys line.done, line.failed, fetch.*).
TRACKER_EVENTS: tuple[type[Message], ...] = (LinesDone, LinesFailed, FetchCompleted, FetchFailed)
