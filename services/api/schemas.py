"""Request and response bodies of the api.

Requests forbid unknown fields, so a typo is an error instead of a silently ignored option.
Booleans and integers are strict: ``"verify_tls": "no"`` is refused rather than guessed at.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StrictBool,
    field_validator,
    model_validator,
)

from shared.conflicts import ConflictPolicyField
from shared.jobs import JobStatus
from shared.lifecycle import JobState, JobStateField, LineState
from shared.storeurl import normalize_store_url

MAX_SECRET_LENGTH = 200


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def normalise_store_url(value: str) -> str:
    """The store URL in its one spelling (``shared.storeurl``), which names the connection."""
    return normalize_store_url(value)


class StoreConfigIn(_Request):
    url: str = Field(
        description=(
            "The store's address. Stored in one spelling (scheme and host lower-cased, IDNA "
            "host, no default port, no trailing slash); an org has one connection per store "
            "(http and https of one host are one store), whatever key reaches it."
        )
    )
    consumer_key: str = Field(min_length=1, max_length=200)
    consumer_secret: SecretStr
    auth: Literal["basic", "query", "oauth1"] = "basic"
    verify_tls: StrictBool = True

    @field_validator("url")
    @classmethod
    def _valid_url(cls, value: str) -> str:
        return normalise_store_url(value)

    @field_validator("consumer_secret")
    @classmethod
    def _secret_length(cls, value: SecretStr) -> SecretStr:
        if not 1 <= len(value.get_secret_value()) <= MAX_SECRET_LENGTH:
            raise ValueError(f"must be between 1 and {MAX_SECRET_LENGTH} characters")
        return value

    @model_validator(mode="after")
    def _no_plain_secret_over_http(self) -> StoreConfigIn:
        # WooCommerce ignores these over plain HTTP anyway; sending them would only leak the secret.
        if self.auth != "oauth1" and self.url.startswith("http://"):
            raise ValueError(
                f"auth {self.auth!r} would send the consumer secret unencrypted over http; "
                "use an https URL or auth 'oauth1'"
            )
        return self


class StartOptions(_Request):
    batch_size: Annotated[int, Field(strict=True, ge=1, le=100)] | None = None
    concurrency: Annotated[int, Field(strict=True, ge=1, le=16)] | None = Field(
        None,
        description="Requests in flight to the store. Absent: adapted to what the store "
        "sustains, starting from what its last sync learned.",
    )
    idempotency_key: str | None = Field(None, min_length=1, max_length=200)
    conflict_policy: ConflictPolicyField | None = Field(
        None,
        description=(
            "How this job settles a customer edited in MantisNXT and in the store since its last "
            "sync; none: the connection's policy (woo_wins unless an operator set another). "
            "Applies to a new job only, not to an open job a start is answered with."
        ),
    )
    include_guests: StrictBool | None = Field(
        None,
        description=(
            "Whether buyers without an account (orders with customer_id 0) become customers too "
            "(kind 'guest', one per normalized billing e-mail). Stored on the store's connection "
            "when a new job is created; none: the connection's setting (false unless set)."
        ),
    )


class StartRequest(_Request):
    action: Literal["start"]
    org_id: UUID
    config: StoreConfigIn
    options: StartOptions = StartOptions()


class StatusRequest(_Request):
    action: Literal["status"]
    org_id: UUID
    job_id: UUID


class RetryRequest(_Request):
    action: Literal["retry"]
    org_id: UUID
    job_id: UUID


class ForceDoneRequest(_Request):
    action: Literal["force-done"]
    org_id: UUID
    job_id: UUID
    reason: str = Field(min_length=1, max_length=500)


class ReplayRequest(_Request):
    action: Literal["replay"]
    org_id: UUID
    job_id: UUID


class ConnectionUpdate(_Request):
    """New credentials for a store connection (PATCH). The store is not changed: its URL is
    the connection's identity. ``auth`` and ``verify_tls`` keep their stored values when absent."""

    consumer_key: str = Field(min_length=1, max_length=200)
    consumer_secret: SecretStr
    auth: Literal["basic", "query", "oauth1"] | None = None
    verify_tls: StrictBool | None = None

    @field_validator("consumer_secret")
    @classmethod
    def _secret_length(cls, value: SecretStr) -> SecretStr:
        return StoreConfigIn._secret_length(value)


class PauseRequest(_Request):
    action: Literal["pause"]
    org_id: UUID
    job_id: UUID


class ResumeRequest(_Request):
    action: Literal["resume"]
    org_id: UUID
    job_id: UUID


class CancelRequest(_Request):
    action: Literal["cancel"]
    org_id: UUID
    job_id: UUID
    reason: str | None = Field(None, min_length=1, max_length=500)


class ResolveConflictsRequest(_Request):
    action: Literal["resolve-conflicts"]
    org_id: UUID
    job_id: UUID
    take: Literal["woo", "mantis"] = Field(
        description="woo: write the store's version; mantis: keep MantisNXT's row."
    )
    woo_id: Annotated[int, Field(strict=True, ge=1, le=2**63 - 1)] | None = Field(
        None, description="The one conflicting customer to resolve (or all: true)."
    )
    all: StrictBool = Field(False, description="Resolve every conflict of the job.")

    @model_validator(mode="after")
    def _one_or_all(self) -> ResolveConflictsRequest:
        if (self.woo_id is None) == (not self.all):
            raise ValueError("give either woo_id (one conflict) or all: true (every conflict)")
        return self


class WebhooksEnableRequest(_Request):
    action: Literal["webhooks-enable"]
    org_id: UUID
    connection_id: UUID


class WebhooksDisableRequest(_Request):
    action: Literal["webhooks-disable"]
    org_id: UUID
    connection_id: UUID


class WebhooksStatusRequest(_Request):
    action: Literal["webhooks-status"]
    org_id: UUID
    connection_id: UUID


ActionRequest = (
    StartRequest
    | StatusRequest
    | RetryRequest
    | ForceDoneRequest
    | ReplayRequest
    | PauseRequest
    | ResumeRequest
    | CancelRequest
    | ResolveConflictsRequest
    | WebhooksEnableRequest
    | WebhooksDisableRequest
    | WebhooksStatusRequest
)
# Which model validates which action, with its handler: services.api.actions.ACTIONS.


MAX_PREVIEW_SAMPLE = 50


class PreviewOptions(_Request):
    sample_size: Annotated[int, Field(strict=True, ge=0, le=MAX_PREVIEW_SAMPLE)] = Field(
        5, description="Customers shown per category, each with its field-level diff."
    )
    concurrency: Annotated[int, Field(strict=True, ge=1, le=16)] | None = Field(
        None,
        description=(
            "Pages read at once, by the preview and in its estimate of a sync "
            "(default WOOSYNC_DEFAULT_CONCURRENCY)."
        ),
    )


class PreviewRequest(_Request):
    """A store to preview: its URL and key (as ``start`` takes them), or a stored connection."""

    org_id: UUID
    config: StoreConfigIn | None = None
    connection_id: UUID | None = None
    options: PreviewOptions = PreviewOptions()

    @model_validator(mode="after")
    def _one_store(self) -> PreviewRequest:
        if (self.config is None) == (self.connection_id is None):
            raise ValueError("give exactly one of config (a store) and connection_id")
        return self


MAX_ORCHESTRATED = 100  # connections of one orchestrate request (the org's cap comes first)


class JobOptions(_Request):
    """What a child job of an orchestration takes (as ``start``'s options, without a key)."""

    batch_size: Annotated[int, Field(strict=True, ge=1, le=100)] | None = None
    concurrency: Annotated[int, Field(strict=True, ge=1, le=16)] | None = None
    conflict_policy: ConflictPolicyField | None = Field(
        None, description="As start's: none is the connection's policy."
    )


class OrchestrateOptions(JobOptions):
    idempotency_key: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="Repeating the request with this key answers with the parent it made "
        "(handing on any child whose publish failed) instead of making another.",
    )


class OrchestratedConnection(_Request):
    connection_id: UUID
    options: JobOptions = Field(
        JobOptions(), description="This store's child only; unset ones are the shared options."
    )


class OrchestrateRequest(_Request):
    """Several stored connections of the org, synced as one parent job with a child each."""

    org_id: UUID
    connection_ids: list[UUID] | None = Field(
        None, min_length=2, max_length=MAX_ORCHESTRATED, description="The stores, by connection."
    )
    connections: list[OrchestratedConnection] | None = Field(
        None,
        min_length=2,
        max_length=MAX_ORCHESTRATED,
        description="The stores with options of their own (instead of connection_ids).",
    )
    options: OrchestrateOptions = OrchestrateOptions()

    @model_validator(mode="after")
    def _distinct_stores(self) -> OrchestrateRequest:
        if (self.connection_ids is None) == (self.connections is None):
            raise ValueError("give exactly one of connection_ids and connections")
        seen: set[UUID] = set()
        named = self.connection_ids or [c.connection_id for c in self.connections or []]
        for connection_id in named:
            if connection_id in seen:
                raise ValueError(f"connection {connection_id} is named twice")
            seen.add(connection_id)
        return self

    def targets(self) -> list[OrchestratedConnection]:
        """Each store with its options, the shared ones filling what its own leave unset."""
        shared = self.options.model_dump(exclude={"idempotency_key"})
        given = self.connections or [
            OrchestratedConnection(connection_id=c) for c in self.connection_ids or []
        ]
        return [
            OrchestratedConnection(
                connection_id=c.connection_id,
                options=JobOptions(**{k: v if v is not None else shared[k] for k, v in c.options}),
            )
            for c in given
        ]


class OrchestratedChild(BaseModel):
    job_id: UUID
    connection_id: UUID
    state: JobStateField


class OrchestrateResult(BaseModel):
    """The parent job; its status (``status_url``) and progress stream follow every child."""

    job_id: UUID
    kind: Literal["orchestration"]
    state: JobStateField
    status_url: str
    progress_url: str
    children: list[OrchestratedChild]


class StartResult(BaseModel):
    job_id: UUID
    state: JobStateField
    status_url: str
    progress_url: str


class PreviewJobAccepted(BaseModel):
    """A store too large to preview while the client waits: a job of kind ``preview`` reads it;
    its status (``status_url``, ``progress_url``) carries the preview once it is done."""

    job_id: UUID
    kind: Literal["preview"]
    state: JobStateField
    status_url: str
    progress_url: str


class StatusResult(JobStatus):
    status_url: str
    progress_url: str


class RetryResult(StatusResult):
    requeued: int  # lines sent to the syncer again
    fetch_resumed: bool  # the fetcher was asked to continue reading the store
    job_reopened: bool  # a finished job is open again (the tracker finishes it anew)

    @property
    def changed_anything(self) -> bool:
        return self.requeued > 0 or self.fetch_resumed or self.job_reopened


class ConnectionOut(BaseModel):
    """A store connection as its org sees it: never its secret, only the key's last characters."""

    connection_id: UUID
    store_url: str
    auth: Literal["basic", "query", "oauth1"]
    verify_tls: bool
    consumer_key_ending: str = Field(description="The consumer key's last 4 characters.")
    has_secret: bool = Field(description="A consumer secret is stored (it is never shown).")
    customers: int = Field(description="Customers stored for this store and not deleted.")
    customers_deleted: int = Field(description="Customers marked deleted (gone from the store).")
    open_job_id: UUID | None = Field(description="The job reading or syncing it now, if any.")
    last_job_id: UUID | None
    created_at: datetime
    updated_at: datetime


class ConnectionList(BaseModel):
    connections: list[ConnectionOut]
    next_cursor: str | None = Field(
        description="Pass as ?cursor= for the next page; null on the last page."
    )


class ConnectionDeleted(BaseModel):
    connection_id: UUID
    store_url: str
    with_customers: bool
    customers_deleted: int = Field(description="Customer rows removed (0 without customers).")
    customers_kept: int = Field(description="Customer rows left in place, detached.")
    jobs_deleted: int


class ResumeResult(StatusResult):
    released: int  # batches held while paused, sent to the syncer again
    fetch_resumed: bool  # the fetcher was asked to read on from the first unread page


class CancelResult(StatusResult):
    lines_cancelled: int  # open lines settled as cancelled
    held_dropped: int  # batches held while paused, dropped
    crawl_stopped: bool  # no crawl of the job runs: its store is free for a new sync


# History: the query strings of the three read routes, and their pages. Query strings are text,
# so integers are parsed (lax), but unknown parameters are refused like unknown body fields.

MAX_PAGE_LIMIT = 200
DEFAULT_PAGE_LIMIT = 50

PageLimit = Annotated[
    int, Field(ge=1, le=MAX_PAGE_LIMIT, description="Rows per page (at most 200).")
]
Cursor = Annotated[
    str,
    Field(
        min_length=1,
        max_length=200,
        description="The next_cursor of the previous page; none for the first page.",
    ),
]


class JobsQuery(_Request):
    """``GET .../sync/jobs``: the org's jobs, newest first."""

    state: JobState | None = Field(None, description="Only jobs in this state.")
    connection_id: UUID | None = Field(None, description="Only jobs of this store connection.")
    limit: PageLimit = DEFAULT_PAGE_LIMIT
    cursor: Cursor | None = None


class LinesQuery(_Request):
    """``GET .../sync/jobs/{job_id}/lines``: a job's lines in one state, in woo_id order."""

    state: LineState = Field(LineState.FAILED, description="Only lines in this state.")
    limit: PageLimit = DEFAULT_PAGE_LIMIT
    cursor: Cursor | None = None


class ActivityQuery(_Request):
    """``GET .../sync/jobs/{job_id}/activity``: a job's activity log, oldest first."""

    limit: PageLimit = DEFAULT_PAGE_LIMIT
    cursor: Cursor | None = None


class JobSummary(BaseModel):
    job_id: UUID
    # Null for a parent job (kind orchestration): its children are listed with their stores.
    connection_id: UUID | None
    store_url: str | None
    kind: Literal["sync", "preview", "orchestration"] = "sync"
    parent_id: UUID | None = None
    state: JobStateField
    total: int
    done: int
    failed: int
    store_total: int | None
    fetch_complete: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    last_error: str | None
    status_url: str


class LineSummary(BaseModel):
    woo_id: int
    state: LineState
    page: int | None
    attempts: int
    last_error: str | None
    retryable: bool = Field(description="The customer is kept: retry or replay can send it again.")
    updated_at: datetime


class ActivityEntry(BaseModel):
    id: int
    at: datetime
    level: Literal["debug", "info", "warning", "error"]
    event: str
    by: str | None = Field(
        description="Who did it: api (details.api_key_id names the key), cli, fetcher, tracker, "
        "a migration; null when the row does not say."
    )
    details: dict[str, Any] = Field(description="What happened, as the writer recorded it.")


class _Page(BaseModel):
    next_cursor: str | None = Field(
        description="Pass as ?cursor= for the next page (same filters); null on the last page."
    )
    next: str | None = Field(description="The next page's URL; null on the last page.")


class JobsPage(_Page):
    items: list[JobSummary]


class LinesPage(_Page):
    items: list[LineSummary]


class ActivityPage(_Page):
    items: list[ActivityEntry]


class ResolveResult(StatusResult):
    take: Literal["woo", "mantis"]
    resolved: int  # conflicting lines settled by this request


class ConflictField(BaseModel):
    field: str
    woo: Any  # the store's value, as the syncer maps it
    mantis: Any  # MantisNXT's value when the conflict was found


class Conflict(BaseModel):
    woo_id: int
    detected_at: datetime
    woo: dict[str, Any]  # the store's customer as it was read
    mantis: dict[str, Any]  # MantisNXT's row when the conflict was found
    diff: list[ConflictField]  # the compared fields whose values differ


class ConflictPage(BaseModel):
    job_id: UUID
    total: int  # conflicts waiting in the job
    conflicts: list[Conflict]  # ordered by woo_id
    next_after: int | None  # pass as ?after= for the next page; None: this is the last


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "unavailable"]
    database: Literal["ok", "unavailable"]
    broker: Literal["ok", "unavailable"]


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str  # stable, for programs: "job_not_found", "rate_limited", ...
    message: str  # for people; never contains a submitted secret


class ErrorEnvelope(BaseModel):
    """The body of every 4xx and 5xx answer."""

    model_config = ConfigDict(extra="forbid")

    error: ErrorDetail


class WebhookOut(BaseModel):
    """One of the connection's webhooks (never its secret or its delivery URL's token)."""

    topic: str
    woo_webhook_id: int | None
    status: str | None = Field(description="As last seen on the store: active, paused, disabled")
    reenabled_count: int = Field(
        description="How often woosync re-enabled it after WooCommerce "
        "disabled it for failed deliveries"
    )


class WebhooksResult(BaseModel):
    connection_id: UUID
    webhooks: list[WebhookOut]
