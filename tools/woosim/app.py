"""The Starlette application: WordPress' REST dispatch for ``/wp-json``, plus ``/__sim``.

``/wp-json`` goes through one dispatcher, in WordPress' order: injected faults (they come from
in front of WordPress), WooCommerce authentication (``wc/`` routes only), the key's read/write
scope, route matching, parameter validation, the permission check, then the handler.
``/__sim`` is the unauthenticated control API used by tests; faults never touch it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import time
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from tools.woosim import php, wp
from tools.woosim.auth import AuthRequest, AuthResult, KeyRing, authenticate, check_key_scope
from tools.woosim.faults import Fault, FaultInjector
from tools.woosim.store import CustomerStore, ListQuery, Record, StoreError

WC_VERSION = "9.9.3"
WP_VERSION = "6.8.1"
REQUEST_LOG_LIMIT = 10_000
LOGGED_PARAMS = frozenset({"page", "per_page", "offset", "orderby", "order", "role"})
_SINGLE_RE = re.compile(r"^/wc/v3/customers/(\d+)$")
_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
_ALLOW_EDITABLE = '["GET","POST","PUT","PATCH","DELETE"]'
_ALLOW_PROTECTED = '["GET","POST","PUT","PATCH"]'  # DELETE only for customers/subscribers.
_BASE_HEADERS = {
    "Content-Type": wp.JSON_CONTENT_TYPE,
    "X-Robots-Tag": "noindex",
    "X-Content-Type-Options": "nosniff",
    "Access-Control-Expose-Headers": "X-WP-Total, X-WP-TotalPages, Link",
    "Access-Control-Allow-Headers": (
        "Authorization, X-WP-Nonce, Content-Disposition, Content-MD5, Content-Type"
    ),
}
_NOCACHE_HEADERS = {
    "Expires": "Wed, 11 Jan 1984 05:00:00 GMT",
    "Cache-Control": "no-cache, must-revalidate, max-age=0, no-store, private",
}
_PHP_NOTICE = (
    "<br />\n<b>Deprecated</b>:  Creation of dynamic property WC_Customer::$legacy_meta is "
    "deprecated in <b>/var/www/html/wp-content/plugins/legacy-loyalty/loyalty.php</b> on line "
    "<b>118</b><br />\n"
)
_CRITICAL_ERROR = {
    "code": "internal_server_error",
    "message": (
        "<p>There has been a critical error on this website.</p><p><a href=\"https://wordpress"
        ".org/documentation/article/faq-troubleshooting/\">Learn more about troubleshooting "
        "WordPress.</a></p>"
    ),
    "data": {"status": 500},
    "additional_errors": [],
}
_REASONS = {429: "Too Many Requests", 502: "Bad Gateway", 503: "Service Unavailable",
            504: "Gateway Time-out"}


@dataclass
class Stats:
    """Counts of ``/wp-json`` requests only (control calls would blur what a client did)."""

    requests: int = 0  # answered
    # Arrived, answered or not yet, and when the latest arrived (Unix time): "did the client
    # send anything after ...?" without counting the answers still on their way.
    received: int = 0
    last_received_at: float | None = None
    by_status: Counter[str] = field(default_factory=Counter)
    by_path: Counter[str] = field(default_factory=Counter)
    by_fault: Counter[str] = field(default_factory=Counter)
    by_auth: Counter[str] = field(default_factory=Counter)
    # Each answered request, oldest first (the latest REQUEST_LOG_LIMIT): when it arrived and
    # was answered (Unix time), its path, paging parameters and status. "Was page 7 read twice,
    # and was anything sent after the pause?" Only LOGGED_PARAMS: no key or signature.
    log: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=REQUEST_LOG_LIMIT))

    def arrived(self) -> None:
        self.received += 1
        self.last_received_at = time.time()

    def record(
        self,
        path: str,
        status: int,
        fault: str,
        auth: str,
        *,
        arrived_at: float | None = None,
        params: Mapping[str, str] | None = None,
    ) -> None:
        self.log.append(
            {
                "arrived_at": arrived_at,
                "answered_at": time.time(),
                "path": path,
                "params": {k: v for k, v in (params or {}).items() if k in LOGGED_PARAMS},
                "status": status,
            }
        )
        self.requests += 1
        self.by_status[str(status)] += 1
        self.by_path[path] += 1
        self.by_fault[fault] += 1
        self.by_auth[auth] += 1

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "received": self.received,
            "last_received_at": self.last_received_at,
            "by_status": dict(self.by_status),
            "by_path": dict(self.by_path),
            "by_fault": dict(self.by_fault),
            "by_auth": dict(self.by_auth),
        }

    def reset(self) -> None:
        self.requests = self.received = 0
        self.last_received_at = None
        self.log.clear()
        for counter in (self.by_status, self.by_path, self.by_fault, self.by_auth):
            counter.clear()


@dataclass
class Simulator:
    """Everything one simulated store holds; the app reads it from ``app.state.sim``."""

    store: CustomerStore
    keys: KeyRing
    faults: FaultInjector
    allow_basic_over_http: bool = False
    stats: Stats = field(default_factory=Stats)


class CutResponse(Response):
    """Sends the status, headers (with the full Content-Length) and part of the body, then
    returns without finishing: the server closes the connection mid-body."""

    def __init__(self, inner: Response, fraction: float) -> None:
        super().__init__(status_code=inner.status_code)
        self.raw_headers = inner.raw_headers
        self.body = inner.body
        self.keep = min(int(len(inner.body) * (0.1 + 0.8 * fraction)), max(len(inner.body) - 1, 0))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = {"type": "http.response.start", "status": self.status_code}
        await send({**start, "headers": self.raw_headers})
        partial = bytes(self.body[: self.keep])
        await send({"type": "http.response.body", "body": partial, "more_body": True})


class TrickleResponse(Response):
    """Sends the status and headers (with the full Content-Length) at once, then the body one
    byte every ``interval_s``: a proxy that trickles. Stops when the client goes away."""

    def __init__(self, inner: Response, interval_s: float) -> None:
        super().__init__(status_code=inner.status_code)
        self.raw_headers = inner.raw_headers
        self.body = inner.body
        self.interval_s = interval_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gone = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.create_task(watch())
        try:
            await send({"type": "http.response.start", "status": self.status_code,
                        "headers": self.raw_headers})  # fmt: skip
            body = bytes(self.body)
            for index in range(len(body)):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(gone.wait(), self.interval_s)
                if gone.is_set():
                    return
                last = index == len(body) - 1
                chunk = body[index : index + 1]
                await send({"type": "http.response.body", "body": chunk, "more_body": not last})
            if not body:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watcher.cancel()


def _json_response(
    body: bytes | str, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    content = body.encode("utf-8") if isinstance(body, str) else body
    return Response(content, status_code=status, headers={**_BASE_HEADERS, **(headers or {})})


def _error_response(error: wp.WPError, base: str) -> Response:
    headers = {"Link": f'<{base}/wp-json/>; rel="https://api.w.org/"'}
    return _json_response(wp.encode(error.body()), error.status, headers)


def _html(status: int, text: str, headers: dict[str, str] | None = None) -> Response:
    body = (
        f"<html>\r\n<head><title>{status} {text}</title></head>\r\n<body>\r\n"
        f"<center><h1>{status} {text}</h1></center>\r\n<hr><center>nginx</center>\r\n"
        "</body>\r\n</html>\r\n"
    )
    return Response(body, status, headers=headers, media_type="text/html")


def _retry_after(seconds: int, http_date: bool) -> str:
    """Delay-seconds, or the same moment as an HTTP-date (what many CDNs send)."""
    return formatdate(time.time() + seconds, usegmt=True) if http_date else str(seconds)


class _Context:
    """One ``/wp-json`` request as WordPress sees it."""

    def __init__(self, sim: Simulator, request: Request) -> None:
        self.sim = sim
        self.request = request
        self.method = request.method.upper()
        scope = request.scope
        self.scheme = str(scope.get("scheme", "http"))
        host = request.headers.get("host")
        if not host:
            server = scope.get("server") or ("127.0.0.1", 80)
            host = f"{server[0]}:{server[1]}"
        self.base = f"{self.scheme}://{host}"
        raw_path = scope.get("raw_path") or request.url.path.encode()
        self.raw_path = raw_path.decode("latin-1").split("?", 1)[0]
        self.query = php.parse_str(scope.get("query_string", b"").decode("utf-8", "replace"))
        route = "/" + str(request.path_params.get("rest", "")).strip("/")
        self.route = route
        self.auth = AuthResult(None, None, "none")
        self._links: tuple[str, str, str] | None = None

    def item_json(self, record: Record, fields: tuple[str, ...] | None) -> str:
        """The record's JSON with ``_links`` (and WordPress 6.7's ``targetHints``) added."""
        if self._links is None:
            collection = wp.dumps(f"{self.base}/wp-json/wc/v3/customers")
            head = ',"_links":{"self":[{"href":' + collection[:-1] + "\\/"
            tail = '","targetHints":{"allow":%s}}],"collection":[{"href":' + collection + "}]}}"
            self._links = (head, tail % _ALLOW_EDITABLE, tail % _ALLOW_PROTECTED)
        head, editable, protected = self._links
        tail = editable if record.role in ("customer", "subscriber") else protected
        text = record.json_open + head + str(record.id) + tail
        if fields is None:
            return text
        return wp.dumps(wp.filter_fields(json.loads(text), fields))

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = dict(extra or {})
        if self.auth.key is not None:
            headers.update(_NOCACHE_HEADERS)
        return headers


async def _dispatch(ctx: _Context) -> Response:
    sim = ctx.sim
    if ctx.route == "/":
        return _json_response(wp.encode(_root_index(ctx)), headers=ctx.headers())
    if ctx.route.startswith(("/wc/", "/wc-")) or ctx.route == "/wc":
        is_ssl = ctx.scheme == "https" or sim.allow_basic_over_http
        ctx.auth = authenticate(
            sim.keys,
            AuthRequest(
                method=ctx.method,
                url=ctx.base.lower() + ctx.raw_path,
                query=ctx.query,
                authorization=ctx.request.headers.get("authorization"),
                is_ssl=is_ssl,
            ),
        )
        if ctx.auth.error is not None:
            raise ctx.auth.error
        if ctx.auth.key is not None:
            scope_error = check_key_scope(ctx.auth.key, ctx.method)
            if scope_error is not None:
                raise scope_error
    reading = ctx.method in ("GET", "HEAD")
    if ctx.route == "/wc/v3" and reading:
        return _json_response(wp.encode(_namespace_index(ctx)), headers=ctx.headers())
    if ctx.route == "/wc/v3/customers" and reading:
        return await _list_customers(ctx)
    single = _SINGLE_RE.match(ctx.route)
    if single and reading:
        return _get_customer(ctx, int(single.group(1)))
    if ctx.route == "/wc/v3/system_status" and reading:
        return _system_status(ctx)
    raise wp.no_route()


def _require(ctx: _Context, capability: str, *, single: bool = False) -> None:
    key = ctx.auth.key
    if key is None:
        raise wp.cannot_view(401, single=single)
    if capability not in key.capabilities:
        raise wp.cannot_view(403, single=single)


async def _list_customers(ctx: _Context) -> Response:
    store = ctx.sim.store
    params = wp.validate_list_params(ctx.query, store.registered_roles)
    _require(ctx, "list_users")
    config = ctx.sim.faults.config
    if config.latency_ms:
        await asyncio.sleep(config.latency_ms / 1000)
    # A caching plugin that caps per_page changes the query WordPress runs, offsets included.
    number = min(params.per_page, config.per_page_cap or params.per_page)
    offset = 0 if config.ignore_offset else params.offset or (params.page - 1) * number
    query = ListQuery(
        role=params.role,
        orderby=params.orderby,
        order=params.order,
        include=params.include,
        exclude=params.exclude,
        search=f"*{php.esc_attr(params.search)}*" if params.search else "",
        email=params.email,
        offset=offset,
        number=number,
    )
    records, total = store.page(query)
    total = config.claimed_total or total
    page = math.ceil(offset / number + 1)
    total_pages = math.ceil(total / number)
    items = [ctx.item_json(record, params.fields) for record in records]
    if config.bad_ids:
        items = _with_bad_ids(store, records, items, config.bad_ids)
    if config.unordered_pages:
        items.reverse()
    body = "[" + ",".join(items) + "]"
    headers = {"X-WP-Total": str(total), "X-WP-TotalPages": str(total_pages), "Allow": "GET, POST"}
    link = wp.pagination_links(
        f"{ctx.base}/wp-json/wc/v3/customers", ctx.query, page, total_pages
    )
    headers["Link"] = link or f'<{ctx.base}/wp-json/>; rel="https://api.w.org/"'
    if config.hide_totals:
        del headers["X-WP-Total"], headers["X-WP-TotalPages"]
    return _json_response(body, headers=ctx.headers(headers))


_BAD_IDS: dict[str, Any] = {
    "2^63": 2**63,
    "huge": 10**30,
    "abc": "abc",
    "numeric_string": "123",
    "null": None,
    "zero": 0,
    "negative": -5,
    "bool": True,
    "float": 1.5,
}


def _with_bad_ids(
    store: CustomerStore, records: list[Record], items: list[str], kinds: tuple[str, ...]
) -> list[str]:
    """``items`` with the ids of the store's ``len(kinds)`` lowest customers broken, one kind
    each, on every page they appear in (as a corrupt row of the store's database would)."""
    lowest, _ = store.page(ListQuery(role="all", orderby="id", number=len(kinds)))
    broken = {record.id: kind for record, kind in zip(lowest, kinds, strict=False)}
    result = []
    for record, text in zip(records, items, strict=True):
        kind = broken.get(record.id)
        if kind is None:
            result.append(text)
        elif kind == "non_object":
            result.append(json.dumps(f"customer {record.id}"))
        else:
            item = json.loads(text)
            del item["id"]
            if kind != "missing":
                item = {"id": _BAD_IDS[kind], **item}
            result.append(json.dumps(item))
    return result


def _get_customer(ctx: _Context, user_id: int) -> Response:
    fields = wp.validate_context(ctx.query)
    record = ctx.sim.store.get(user_id)
    if record is None:  # Resolved before the capability check: 404 even without a key.
        raise wp.WPError("wc_user_invalid_id", "Invalid user ID.", 404)
    _require(ctx, "list_users", single=True)
    headers = {
        "Link": f'<{ctx.base}/wp-json/>; rel="https://api.w.org/"',
        "Allow": "GET, POST, PUT, PATCH, DELETE",
    }
    return _json_response(ctx.item_json(record, fields), headers=ctx.headers(headers))


def _system_status(ctx: _Context) -> Response:
    _require(ctx, "manage_woocommerce")
    body = {
        "environment": {
            "home_url": ctx.base,
            "site_url": ctx.base,
            "version": WC_VERSION,
            "wp_version": WP_VERSION,
            "wp_multisite": False,
            "wp_memory_limit": 268435456,
            "php_version": "8.2.27",
            "server_info": "nginx/1.26.2",
        },
        "database": {"wc_database_version": WC_VERSION},
        "active_plugins": [{"plugin": "woocommerce/woocommerce.php", "version": WC_VERSION}],
        "inactive_plugins": [],
        "dropins_mu_plugins": {"dropins": [], "mu_plugins": []},
        "theme": {"name": "Storefront", "version": "4.6.1"},
        "settings": {"api_enabled": True, "currency": "ZAR"},
        "security": {"secure_connection": ctx.scheme == "https", "hide_errors": True},
        "pages": [],
        "post_type_counts": [],
    }
    return _json_response(wp.encode(body), headers=ctx.headers())


def _root_index(ctx: _Context) -> dict[str, Any]:
    return {
        "name": "Simulated WooCommerce store",
        "description": "woosim",
        "url": ctx.base,
        "home": ctx.base,
        "gmt_offset": ctx.sim.store.offset_hours,
        "timezone_string": "",
        "namespaces": ["wc/v3"],
        "authentication": [],
        "routes": {},
        "_links": {"help": [{"href": "https://developer.wordpress.org/rest-api/"}]},
    }


def _collection_args(ctx: _Context) -> dict[str, Any]:
    roles = ["all", *ctx.sim.store.registered_roles]
    return {
        "context": {"default": "view", "enum": list(wp.CONTEXT_VALUES), "required": False},
        "page": {"default": 1, "minimum": 1, "type": "integer", "required": False},
        "per_page": {"default": 10, "minimum": 1, "maximum": 100, "type": "integer",
                     "required": False},
        "search": {"type": "string", "required": False},
        "exclude": {"default": [], "type": "array", "items": {"type": "integer"},
                    "required": False},
        "include": {"default": [], "type": "array", "items": {"type": "integer"},
                    "required": False},
        "offset": {"type": "integer", "required": False},
        "order": {"default": "asc", "enum": list(wp.ORDER_VALUES), "type": "string",
                  "required": False},
        "orderby": {"default": "name", "enum": list(wp.ORDERBY_VALUES), "type": "string",
                    "required": False},
        "email": {"format": "email", "type": "string", "required": False},
        "role": {"default": "customer", "enum": roles, "type": "string", "required": False},
    }


def _namespace_index(ctx: _Context) -> dict[str, Any]:
    def route(methods: list[str], args: dict[str, Any], href: str | None) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "namespace": "wc/v3",
            "methods": methods,
            "endpoints": [{"methods": methods, "args": args}],
        }
        if href:
            entry["_links"] = {"self": [{"href": f"{ctx.base}/wp-json{href}"}]}
        return entry

    context = {"context": _collection_args(ctx)["context"]}
    return {
        "namespace": "wc/v3",
        "routes": {
            "/wc/v3": route(["GET"], {"namespace": {"default": "wc/v3", "required": False},
                                      "context": {"default": "view", "required": False}},
                            "/wc/v3"),
            "/wc/v3/customers": route(["GET", "POST"], _collection_args(ctx),
                                      "/wc/v3/customers"),
            "/wc/v3/customers/(?P<id>[\\d]+)": route(
                ["GET", "POST", "PUT", "PATCH", "DELETE"], context, None
            ),
            "/wc/v3/system_status": route(["GET"], context, "/wc/v3/system_status"),
        },
        "_links": {"up": [{"href": f"{ctx.base}/wp-json/"}]},
    }


# --- faults -----------------------------------------------------------------------------------


def _fault_response(fault: Fault, sim: Simulator) -> Response:
    config = sim.faults.config
    retry_after = _retry_after(config.retry_after, config.retry_after_http_date)
    if fault.kind == "429":
        return _html(429, _REASONS[429], {"Retry-After": retry_after})
    if fault.status == 500:  # PHP fatal error, caught by WordPress' recovery handler.
        return _json_response(wp.encode(_CRITICAL_ERROR), 500)
    if fault.status == 503:  # WordPress' maintenance mode.
        body = (
            "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Maintenance</title></head>"
            "<body><h1>Briefly unavailable for scheduled maintenance. Check back in a minute."
            "</h1></body></html>"
        )
        return Response(body, 503, headers={"Retry-After": retry_after}, media_type="text/html")
    return _html(fault.status, _REASONS.get(fault.status, "Server Error"))


def _corrupt(response: Response, variant: float) -> Response:
    """A 200 whose body is not JSON: a PHP notice before it, or a truncated (but complete) body."""
    body = bytes(response.body)
    if variant < 0.5:
        body = _PHP_NOTICE.encode() + body
    else:
        body = body[: max(1, int(len(body) * variant) - 1)]
    headers = {k: v for k, v in response.headers.items() if k.lower() != "content-length"}
    return Response(body, response.status_code, headers=headers)


async def wp_json(request: Request) -> Response:
    sim: Simulator = request.app.state.sim
    sim.stats.arrived()
    arrived_at = sim.stats.last_received_at
    ctx = _Context(sim, request)
    fault = sim.faults.decide()
    if fault.delay_s:
        await asyncio.sleep(fault.delay_s)
    if fault.kind in ("429", "5xx"):
        response = _fault_response(fault, sim)
    else:
        try:
            response = await _dispatch(ctx)
        except wp.WPError as error:
            response = _error_response(error, ctx.base)
        if fault.kind == "cut":
            response = CutResponse(response, fault.variant)
        elif fault.kind == "bad_json":
            response = _corrupt(response, fault.variant)
        elif fault.kind == "trickle":
            response = TrickleResponse(response, sim.faults.config.trickle_ms / 1000)
    sim.stats.record(
        request.url.path,
        response.status_code,
        fault.kind,
        ctx.auth.method,
        arrived_at=arrived_at,
        params=request.query_params,
    )
    return response


# --- control API ------------------------------------------------------------------------------


def _control(payload: Any, status: int = 200) -> Response:
    return Response(
        json.dumps(payload, ensure_ascii=False).encode("utf-8"),
        status,
        media_type="application/json",
    )


def _control_error(message: str, status: int = 400) -> Response:
    return _control({"error": message}, status)


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    if not raw.strip():
        return {}
    return json.loads(raw)


async def sim_customers(request: Request) -> Response:
    sim: Simulator = request.app.state.sim
    if request.method == "GET":
        return Response(sim.store.customers_json(), media_type="application/json")
    try:
        fields = await _json_body(request)
        if not isinstance(fields, dict):
            return _control_error("body must be a JSON object")
        return _control(sim.store.create(fields), 201)
    except json.JSONDecodeError:
        return _control_error("body is not JSON")
    except StoreError as error:
        return _control_error(error.message, error.status)


async def sim_customer(request: Request) -> Response:
    sim: Simulator = request.app.state.sim
    user_id = int(request.path_params["user_id"])
    try:
        if request.method == "GET":
            record = sim.store.get(user_id)
            if record is None:
                return _control_error(f"no user {user_id}", 404)
            return _control(record.customer())
        if request.method == "DELETE":
            return _control(sim.store.delete(user_id))
        fields = await _json_body(request)
        if not isinstance(fields, dict):
            return _control_error("body must be a JSON object")
        return _control(sim.store.update(user_id, fields))
    except json.JSONDecodeError:
        return _control_error("body is not JSON")
    except StoreError as error:
        return _control_error(error.message, error.status)


async def sim_odd_customers(request: Request) -> Response:
    """``{"kinds": ["nul", "long_name", "unicode", "lone_surrogate", "deep_meta:200"]}``: one
    customer per kind made odd (``data.odd_customer``); answers ``{kind: id}``."""
    sim: Simulator = request.app.state.sim
    try:
        body = await _json_body(request)
        kinds = body.get("kinds") if isinstance(body, dict) else None
        if not isinstance(kinds, list) or not all(isinstance(k, str) for k in kinds):
            return _control_error('body must be {"kinds": [<kind>, ...]}')
        return _control(sim.store.make_odd(kinds))
    except json.JSONDecodeError:
        return _control_error("body is not JSON")
    except StoreError as error:
        return _control_error(error.message, error.status)


async def sim_faults(request: Request) -> Response:
    sim: Simulator = request.app.state.sim
    if request.method == "PUT":
        try:
            changes = await _json_body(request)
            if not isinstance(changes, dict):
                return _control_error("body must be a JSON object")
            sim.faults.update(changes)
        except (json.JSONDecodeError, ValueError, TypeError) as error:
            return _control_error(str(error))
    return _control(sim.faults.config.to_dict())


async def sim_requests(request: Request) -> Response:
    """The request log (see ``Stats.log``); emptied with the stats."""
    sim: Simulator = request.app.state.sim
    return _control(list(sim.stats.log))


async def sim_stats(request: Request) -> Response:
    sim: Simulator = request.app.state.sim
    if request.method == "DELETE":
        sim.stats.reset()
    return _control(sim.stats.snapshot())


async def sim_keys(request: Request) -> Response:
    sim: Simulator = request.app.state.sim
    action = request.path_params.get("action")
    if action == "revoke":
        try:
            body = await _json_body(request)
            mode = body.get("mode", "secret") if isinstance(body, dict) else "secret"
            sim.keys.revoke(str(mode))
        except (json.JSONDecodeError, ValueError) as error:
            return _control_error(str(error))
    elif action == "restore":
        sim.keys.restore()
    elif action in ("add", "remove"):
        try:
            body = await _json_body(request)
            if not isinstance(body, dict):
                return _control_error("body must be a JSON object")
            if action == "remove":
                sim.keys.remove(str(body.get("consumer_key", "")))
            else:
                key = sim.keys.add(body.get("consumer_key"), body.get("consumer_secret"))
                return _control(
                    {"consumer_key": key.consumer_key, "consumer_secret": key.consumer_secret},
                    201,
                )
        except (json.JSONDecodeError, ValueError) as error:
            return _control_error(str(error))
    elif action is not None:
        return _control_error(f"unknown action {action!r}", 404)
    return _control({"revoked": sim.keys.revoked, "added": sorted(sim.keys.added)})


async def sim_health(request: Request) -> Response:
    sim: Simulator = request.app.state.sim
    return _control({"ok": True, "customers": len(sim.store)})


def create_app(sim: Simulator) -> Starlette:
    app = Starlette(
        routes=[
            Route("/wp-json", wp_json, methods=_ALL_METHODS),
            Route("/wp-json/{rest:path}", wp_json, methods=_ALL_METHODS),
            Route("/__sim/health", sim_health, methods=["GET"]),
            Route("/__sim/customers", sim_customers, methods=["GET", "POST"]),
            Route(
                "/__sim/customers/{user_id:int}",
                sim_customer,
                methods=["GET", "PUT", "PATCH", "DELETE"],
            ),
            Route("/__sim/faults", sim_faults, methods=["GET", "PUT"]),
            Route("/__sim/odd-customers", sim_odd_customers, methods=["POST"]),
            Route("/__sim/stats", sim_stats, methods=["GET", "DELETE"]),
            Route("/__sim/requests", sim_requests, methods=["GET"]),
            Route("/__sim/keys", sim_keys, methods=["GET"]),
            Route("/__sim/keys/{action:str}", sim_keys, methods=["POST"]),
        ]
    )
    app.state.sim = sim
    return app
