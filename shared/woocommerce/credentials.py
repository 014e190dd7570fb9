"""How to reach one store: its base URL, its API key, and which way to present the key."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

AuthMode = Literal["basic", "query", "oauth1"]


class StoreConfig(BaseModel):
    """Everything the client needs to talk to one store.

    The secret is a ``SecretStr`` so that ``repr``/``str``/logging of the config, or of anything
    that holds it, shows ``**********`` instead of the secret.
    """

    model_config = ConfigDict(frozen=True)

    # Base store URL, e.g. ``https://shop.example`` or ``https://example.com/shop`` for a
    # WordPress in a subdirectory; ``/wp-json/wc/v3/...`` is appended to it.
    url: str
    consumer_key: str = Field(min_length=1)
    consumer_secret: SecretStr
    # basic and query only work over HTTPS on a real store; oauth1 is WooCommerce's HTTP option.
    auth: AuthMode
    # True: system/certifi CAs; False: no verification; a string: path of a CA bundle (PEM).
    verify_tls: bool | str = True

    @field_validator("url")
    @classmethod
    def _plain_base_url(cls, value: str) -> str:
        """Only a scheme, host and optional path: query and fragment would corrupt every URL."""
        value = value.strip().rstrip("/")
        scheme, sep, rest = value.partition("://")
        if not sep or scheme.lower() not in ("http", "https") or not rest:
            raise ValueError("store url must start with http:// or https:// and name a host")
        if "?" in rest or "#" in rest:
            raise ValueError("store url must not contain a query or fragment")
        return value

    @field_validator("consumer_secret")
    @classmethod
    def _non_empty_secret(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value():
            raise ValueError("consumer secret must not be empty")
        return value
