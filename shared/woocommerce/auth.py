"""The three ways WooCommerce accepts an API key, applied to outgoing httpx requests.

- ``basic``: HTTP Basic with key and secret (HTTPS only on a real store).
- ``query``: ``consumer_key``/``consumer_secret`` query parameters (HTTPS only; for hosts that
  strip the Authorization header). These are added by a transport wrapper, *below* httpx's
  client layer, because httpx logs ``request.url`` at INFO and attaches it to responses and
  exceptions: the secret must never be in that URL.
- ``oauth1``: one-legged OAuth 1.0a, HMAC-SHA256, parameters in the query string. Signed anew on
  every send, so each retry carries a fresh nonce and timestamp (the store rejects replays).
"""

from __future__ import annotations

from collections.abc import Generator

import httpx
from oauthlib.oauth1 import SIGNATURE_HMAC_SHA256, SIGNATURE_TYPE_QUERY, Client
from pydantic import SecretStr

from shared.woocommerce.credentials import StoreConfig


class OAuth1Auth(httpx.Auth):
    """Signs the full URL, including its query parameters, as WooCommerce verifies it."""

    def __init__(self, consumer_key: str, consumer_secret: SecretStr) -> None:
        self._consumer_key = consumer_key
        self._consumer_secret = consumer_secret

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        # A new oauthlib client per request: no nonce/timestamp can be shared between sends.
        signer = Client(
            self._consumer_key,
            client_secret=self._consumer_secret.get_secret_value(),
            signature_method=SIGNATURE_HMAC_SHA256,
            signature_type=SIGNATURE_TYPE_QUERY,
        )
        signed_url, _headers, _body = signer.sign(str(request.url), http_method=request.method)
        request.url = httpx.URL(signed_url)
        yield request


def with_query_credentials(
    request: httpx.Request, consumer_key: str, consumer_secret: SecretStr
) -> httpx.Request:
    """A copy of ``request`` whose URL also carries the key and secret as query parameters."""
    url = request.url.copy_merge_params(
        {"consumer_key": consumer_key, "consumer_secret": consumer_secret.get_secret_value()}
    )
    return httpx.Request(
        request.method,
        url,
        headers=request.headers,
        stream=request.stream,
        extensions=request.extensions,
    )


class QueryCredentialsTransport(httpx.AsyncBaseTransport):
    """Adds query-string credentials on the way to the wire, invisible to the client layer."""

    def __init__(
        self, inner: httpx.AsyncBaseTransport, consumer_key: str, consumer_secret: SecretStr
    ) -> None:
        self._inner = inner
        self._consumer_key = consumer_key
        self._consumer_secret = consumer_secret

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        wire_request = with_query_credentials(request, self._consumer_key, self._consumer_secret)
        return await self._inner.handle_async_request(wire_request)

    async def aclose(self) -> None:
        await self._inner.aclose()


def request_auth(config: StoreConfig) -> httpx.Auth | None:
    """The httpx auth for ``config``; None for query mode, which is applied by the transport."""
    if config.auth == "basic":
        return httpx.BasicAuth(config.consumer_key, config.consumer_secret.get_secret_value())
    if config.auth == "oauth1":
        return OAuth1Auth(config.consumer_key, config.consumer_secret)
    return None


def wrap_transport(
    config: StoreConfig, transport: httpx.AsyncBaseTransport
) -> httpx.AsyncBaseTransport:
    """``transport`` itself, or wrapped so that it adds query-string credentials."""
    if config.auth == "query":
        return QueryCredentialsTransport(transport, config.consumer_key, config.consumer_secret)
    return transport
