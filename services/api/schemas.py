"""Request and response bodies of the api.

Requests forbid unknown fields, so a typo is an error instead of a silently ignored option.
Booleans and integers are strict: ``"verify_tls": "no"`` is refused rather than guessed at.
"""

from __future__ import annotations

from typing import Annotated, Literal
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

from shared.jobs import JobStatus
from shared.lifecycle import JobStateField
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
    concurrency: Annotated[int, Field(strict=True, ge=1, le=16)] | None = None
    idempotency_key: str | None = Field(None, min_length=1, max_length=200)


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
