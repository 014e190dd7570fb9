"""Hypothesis strategies for what a store may send: customers half tidy, half anything at all.

Shared by the mapping's property test (tests/unit) and the syncer's (tests/integration)."""

from __future__ import annotations

from datetime import timedelta, timezone
from typing import Any

from hypothesis import strategies as st

from shared.mapping import MAX_EMAIL

# Any Unicode, surrogates and NUL included, sometimes far beyond every column limit.
any_text = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(exclude_categories=()), max_size=40),
    st.text(alphabet=st.sampled_from("ab\x00\ud800 @é🦊"), max_size=20),
    st.integers(0, 3000).map(lambda n: "x" * n),
)
scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**200), max_value=10**200),
    st.floats(allow_nan=True, allow_infinity=True),
    any_text,
)
json_value = st.recursive(
    scalar,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(any_text, children, max_size=4)
    ),
    max_leaves=12,
)
wrong = st.one_of(json_value, st.sets(st.integers(), max_size=2), st.just(object()))

emails = st.one_of(
    st.emails(),
    st.builds(lambda a, b: f"{a}@{b}", any_text, any_text),
    st.integers(300, 400).map(lambda n: "a" * n + "@example.com"),
    wrong,
)
offsets = st.builds(
    timezone, st.timedeltas(min_value=timedelta(hours=-23), max_value=timedelta(hours=23))
)
DATE_LIKE = r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:?\d{2})?"
good_dates = st.one_of(
    st.datetimes().map(lambda d: d.isoformat(timespec="seconds")),
    st.datetimes(timezones=offsets).map(lambda d: d.isoformat(timespec="microseconds")),
    st.datetimes().map(lambda d: d.isoformat(timespec="seconds") + "Z"),
)
dates = st.one_of(
    st.datetimes().map(lambda d: d.isoformat(timespec="seconds")),
    st.datetimes(timezones=offsets).map(lambda d: d.isoformat()),
    st.from_regex(DATE_LIKE, fullmatch=True),
    wrong,
)
addresses = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "company": st.one_of(any_text, wrong),
            "phone": st.one_of(any_text, st.integers(), wrong),
            "email": any_text,
            "city": any_text,
        },
    ),
    wrong,
)
ids = st.one_of(st.integers(min_value=1, max_value=2**63 - 1), st.integers(), wrong)
paying = st.one_of(st.booleans(), st.sampled_from(["1", "0", "true", "false", "yes"]), wrong)

clean_text = st.text(
    alphabet=st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=30
)


def near(limit: int) -> st.SearchStrategy[str]:
    """Strings right at a length, one either side, in multi-byte characters."""
    return st.integers(limit - 1, limit + 1).map(lambda n: "é" * n)


nasty_text = st.text(alphabet=st.sampled_from("ab é\x00\ud800"), min_size=1, max_size=5)


def text_field(limit: int) -> st.SearchStrategy[Any]:
    return st.one_of(clean_text, near(limit), st.integers(-(10**6), 10**6), nasty_text)


# What a sane store sends, and what a broken one might; each field picks one (or is missing).
VALID: dict[str, st.SearchStrategy[Any]] = {
    "id": st.integers(min_value=1, max_value=2**63 - 1),
    "email": st.one_of(st.emails(), near(MAX_EMAIL - 4).map(lambda s: s[:-4] + "@a.b")),
    "first_name": text_field(255),
    "last_name": text_field(255),
    "username": text_field(255),
    "role": text_field(100),
    "avatar_url": text_field(2048),
    "billing": st.fixed_dictionaries(
        {}, optional={"company": text_field(255), "phone": text_field(100)}
    ),
    "shipping": st.dictionaries(clean_text, st.one_of(clean_text, nasty_text), max_size=3),
    "meta_data": st.lists(
        st.fixed_dictionaries({"id": st.integers(), "key": clean_text, "value": clean_text}),
        max_size=2,
    ),
    "is_paying_customer": st.sampled_from([True, False, "1", "0", "true", "false"]),
    "date_created": st.datetimes().map(lambda d: d.isoformat(timespec="seconds")),
    "date_created_gmt": good_dates,
    "date_modified": st.datetimes().map(lambda d: d.isoformat(timespec="seconds")),
    "date_modified_gmt": good_dates,
    "_links": json_value,
}
CHAOS: dict[str, st.SearchStrategy[Any]] = {
    "id": ids,
    "email": emails,
    "first_name": st.one_of(any_text, wrong),
    "last_name": st.one_of(any_text, wrong),
    "username": st.one_of(any_text, wrong),
    "role": st.one_of(any_text, wrong),
    "avatar_url": st.one_of(any_text, wrong),
    "billing": addresses,
    "shipping": addresses,
    "meta_data": st.one_of(st.lists(json_value, max_size=3), wrong),
    "is_paying_customer": paying,
    "date_created": dates,
    "date_created_gmt": dates,
    "date_modified": dates,
    "date_modified_gmt": dates,
    "_links": wrong,
}
REQUIRED = ("id", "email")


@st.composite
def customers(draw: st.DrawFn) -> dict[Any, Any]:
    """Half tidy (only in-range or absent values), half messy (any field may be anything)."""
    messy = draw(st.booleans())
    customer: dict[Any, Any] = {}
    for name, valid in VALID.items():
        choices = ["valid"] * 6 + ["null", "missing"] + (["chaos"] if messy else [])
        choice = "valid" if name in REQUIRED and not messy else draw(st.sampled_from(choices))
        if choice == "valid":
            customer[name] = draw(valid)
        elif choice == "chaos":
            customer[name] = draw(CHAOS[name])
        elif choice == "null":
            customer[name] = None
    if messy:
        customer = {**draw(st.dictionaries(any_text, json_value, max_size=2)), **customer}
    return customer
