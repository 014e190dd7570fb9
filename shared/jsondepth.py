"""Parsing JSON from stores whatever its nesting depth.

Python's ``json`` parser recurses once per level and raises ``RecursionError`` at about 990
levels (the default recursion limit), so one customer whose ``meta_data`` a plugin nested 2,000
levels deep would spoil its whole page. :func:`loads` parses normally, and only when that fails
for depth replaces every array or object that opens deeper than :data:`CUT_DEPTH` by the string
:data:`TOO_DEEP`. The document keeps its shape down to that depth, so a customer stays a customer
with its id, and it stays deeper than ``shared.mapping.MAX_JSON_DEPTH``: the mapping refuses that
customer alone ("nested deeper than 512 levels"), never its page. A customer's ``raw`` is never
built from a cut document, because a customer that deep is never stored.

Speed: every page of every store and every message is parsed here, so :func:`loads` tries
``orjson`` first (several times faster than ``json``) and falls back to ``json`` wherever the two
could disagree, so that the result is always what ``json.loads`` gives:

- a run of 19 or more digits that may be a number's (orjson turns integers beyond 64 bits
  into floats). The search is linear and in C; a run whose number bytes (sign, fraction,
  exponent) are not opened the way a value is (after whitespace, ``:``, ``[`` or ``,``) is
  inside a string and harmless, such as the MD5 in every Gravatar URL, which used to send
  about a quarter of all store pages to the slow path;
- anything orjson refuses: ``NaN`` and ``Infinity`` (which ``json`` accepts), numbers that
  overflow to infinity, lone surrogates, a UTF-8 BOM, nesting past orjson's limit, and invalid
  JSON or UTF-8, which ``json`` then refuses with its own error.

The fallback makes each non-finite number a :class:`NonFiniteFloat` (a ``float`` in every
respect), which ``orjson`` refuses to encode: so ``shared.broker`` encoding such a customer falls
back to ``json`` too and writes ``NaN`` as it came, instead of orjson's silent ``null``, and the
mapping refuses that customer as it always did.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson

from shared.mapping import MAX_JSON_DEPTH

CUT_DEPTH = MAX_JSON_DEPTH + 64  # deeper than the mapping stores, shallower than json recurses
TOO_DEEP = "(woosync: nested too deeply to parse)"

# A whole string (escapes included) or one bracket: strings are skipped in one step.
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)
# Where orjson and json could read a number differently (integers beyond 64 bits): a run of 19
# ASCII digits, found by mapping every digit to "0" and everything else to " " and searching the
# result (linear; a regular expression backtracks over each long run of fewer digits).
_DIGITS_ONLY = bytes(48 if 48 <= i <= 57 else 32 for i in range(256))
_LONG_RUN = b"0" * 19
# A number's bytes, and what opens a value (so what comes right before a number outside a
# string). In valid JSON, digits that do not belong to a token of number bytes opened this way
# are inside a string; invalid JSON goes to json anyway, as orjson refuses it.
_NUMBER_BYTES = frozenset(b"0123456789+-.eE")
_VALUE_LEAD = frozenset(b" \t\r\n:[,")
_LOOK_BACK = 64  # number bytes before a run; past this the run counts as a number's


def _has_long_digit_run(text: str | bytes) -> bool:
    """Whether ``text`` may hold a number with a run of 19 digits (see the module). Floats
    count too, to be safe."""
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
    digits = data.translate(_DIGITS_ONLY)
    start = digits.find(_LONG_RUN)
    while start != -1:  # always a run's first digit: the search restarts after each run
        first = start
        while first > 0 and data[first - 1] in _NUMBER_BYTES and start - first < _LOOK_BACK:
            first -= 1
        if first == 0 or data[first - 1] in _VALUE_LEAD or start - first >= _LOOK_BACK:
            return True
        end = digits.find(b" ", start)
        if end == -1:
            return False
        start = digits.find(_LONG_RUN, end)
    return False


class NonFiniteFloat(float):
    """NaN or an infinity read from JSON: a float that orjson will not encode (see above)."""


def _float(text: str) -> float:
    value = float(text)
    return value if math.isfinite(value) else NonFiniteFloat(value)


def _json_loads(text: str | bytes) -> Any:
    return json.loads(text, parse_constant=NonFiniteFloat, parse_float=_float)


def parse(text: str | bytes) -> Any:
    """``json.loads`` as fast as orjson allows (see above), with non-finite numbers as
    :class:`NonFiniteFloat`; raises ``RecursionError`` for nesting past ``json``'s limit."""
    if not _has_long_digit_run(text):
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass  # json decides, and says why when it refuses too
    return _json_loads(text)


def loads(text: str | bytes) -> Any:
    """:func:`parse`, except that containers nested past :data:`CUT_DEPTH` become
    :data:`TOO_DEEP` instead of raising ``RecursionError``. Invalid JSON still raises
    ``ValueError`` (``json.JSONDecodeError`` or ``UnicodeDecodeError``)."""
    try:
        return parse(text)
    except RecursionError:
        pass
    if isinstance(text, bytes | bytearray):
        text = text.decode("utf-8")
    return _json_loads(cut(text, CUT_DEPTH))


def cut(text: str, depth: int) -> str:
    """``text`` with every array or object opening below ``depth`` levels replaced by
    :data:`TOO_DEEP` (as a JSON string). Iterative: no depth can exhaust the stack."""
    parts: list[str] = []
    level = 0
    last = 0
    skip_from: int | None = None
    for match in _TOKEN.finditer(text):
        token = match.group()
        if token[0] == '"':
            continue
        if token in "[{":
            level += 1
            if level == depth + 1 and skip_from is None:
                skip_from = match.start()
        else:
            if level == depth + 1 and skip_from is not None:
                parts.append(text[last:skip_from])
                parts.append(json.dumps(TOO_DEEP))
                last = match.end()
                skip_from = None
            level -= 1
    if skip_from is not None:
        raise json.JSONDecodeError("array or object never closed", text, skip_from)
    parts.append(text[last:])
    return "".join(parts)
