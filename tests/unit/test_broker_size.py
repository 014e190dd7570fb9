"""Message size: refused before publishing, and batches split to fit (issue 8, item 3)."""

from __future__ import annotations

import json
import math
from typing import Any
from uuid import uuid4

import pytest

from shared import jsondepth
from shared.broker import (
    DEFAULT_MAX_MESSAGE_BYTES,
    MessageTooLarge,
    encode,
    make_broker,
    publish_body_to_queue,
    split_customer_batch,
)
from shared.messages import CustomerBatch
from shared.settings import Settings


def batch(customers: list[dict[str, Any]]) -> CustomerBatch:
    return CustomerBatch(job_id=uuid4(), org_id=uuid4(), connection_id=uuid4(), customers=customers)


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = [value]
    return value


def test_default_limit_is_rabbitmq_4s() -> None:
    assert DEFAULT_MAX_MESSAGE_BYTES == Settings().max_message_bytes == 16 * 1024 * 1024


async def test_publish_refuses_a_body_over_the_limit_before_the_broker_sees_it() -> None:
    broker = make_broker(Settings(max_message_bytes=64 * 1024))  # never connected
    with pytest.raises(MessageTooLarge) as info:
        await publish_body_to_queue(broker, "q", b"x" * (64 * 1024 + 1), message_id=None)
    assert (info.value.size, info.value.limit) == (64 * 1024 + 1, 64 * 1024)
    assert "WOOSYNC_MAX_MESSAGE_BYTES" in str(info.value)


def test_encode_writes_customers_nested_past_pydantics_serializer() -> None:
    customers = [{"id": 1, "meta_data": nested(600)}]
    body = encode(batch(customers))
    assert json.loads(body)["customers"] == customers
    assert CustomerBatch.model_validate(json.loads(body)).customers == customers


def test_a_batch_that_fits_is_not_split() -> None:
    whole = batch([{"id": i} for i in range(10)])
    assert split_customer_batch(whole, 64 * 1024) == ([whole], [])


def test_split_keeps_every_customer_in_order_under_the_limit() -> None:
    limit = 64 * 1024
    customers = [{"id": i, "last_name": "x" * 9_000} for i in range(1, 21)]
    customers.insert(5, {"id": 99, "last_name": "y" * 70_000})  # too large even alone
    original = batch(customers)
    parts, oversize = split_customer_batch(original, limit)
    assert len(parts) > 1
    assert all(len(encode(part)) <= limit for part in parts)
    assert [c["id"] for p in parts for c in p.customers] == list(range(1, 21))
    assert [o.customer["id"] for o in oversize] == [99]
    assert "bytes as JSON, more than a message may carry" in oversize[0].error
    assert len({p.message_id for p in parts}) == len(parts)
    assert split_customer_batch(original, limit)[0] == parts  # the same ids every time
    print(f"{len(customers)} customers of ~9 kB in {len(parts)} messages under {limit} bytes")


def test_a_customer_too_deep_to_encode_is_reported_alone() -> None:
    parts, oversize = split_customer_batch(batch([{"id": 1}, {"id": 2, "m": nested(5000)}]))
    assert [c["id"] for c in parts[0].customers] == [1]
    assert [o.customer["id"] for o in oversize] == [2]


def test_a_lone_surrogate_travels_escaped() -> None:
    customers = [{"id": 1, "last_name": "D\udc80e", "first_name": "Zoë 🦊"}]
    body = encode(batch(customers))
    assert json.loads(body)["customers"] == customers
    assert split_customer_batch(batch(customers))[1] == []


def test_what_a_store_sent_travels_unchanged_to_the_syncer() -> None:
    """NaN, infinities and integers beyond 64 bits, which orjson would write as null or refuse,
    reach the syncer as the store sent them (the mapping then refuses that customer alone)."""
    page = jsondepth.loads(
        b'[{"id": 1, "meta": [NaN, Infinity, -Infinity, 1e400, 123456789012345678901234567890]},'
        b' {"id": 2, "first_name": "Zo\\u00eb", "n": 1.5e-7}]'
    )
    body = encode(batch(page))
    assert b"NaN" in body and b"Infinity" in body and b"123456789012345678901234567890" in body
    received = jsondepth.parse(body)["customers"]
    meta = received[0]["meta"]
    assert math.isnan(meta[0]) and meta[1:4] == [math.inf, -math.inf, math.inf]
    assert meta[4] == 123456789012345678901234567890 and received[1] == page[1]
    assert split_customer_batch(batch(page))[1] == []
