"""The WooCommerce store client: auth (basic, query, oauth1), customer paging, retry policy."""

from shared.woocommerce.client import (
    CUSTOMERS_PATH,
    MAX_PER_PAGE,
    CustomerPage,
    RequestGate,
    WooClient,
)
from shared.woocommerce.credentials import AuthMode, StoreConfig
from shared.woocommerce.errors import (
    StoreAuthError,
    StoreBadResponse,
    StoreError,
    StoreTLSError,
    StoreUnavailable,
)
from shared.woocommerce.retry import RetryPolicy, parse_retry_after

__all__ = [
    "CUSTOMERS_PATH",
    "MAX_PER_PAGE",
    "AuthMode",
    "CustomerPage",
    "RequestGate",
    "RetryPolicy",
    "StoreAuthError",
    "StoreBadResponse",
    "StoreConfig",
    "StoreError",
    "StoreTLSError",
    "StoreUnavailable",
    "WooClient",
    "parse_retry_after",
]
