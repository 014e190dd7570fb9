"""Parsing JSON from stores whatever its nesting depth.

Python's ``json`` parser recurses once per level and raises ``RecursionError`` at about 990
levels (the default recursion limit), so one customer whose ``meta_data`` a plugin nested 2,000
levels deep would spoil its whole page. :func:`loads` parses normally, and only when that fails
for depth replaces every array or object that opens deeper than :data:`CUT_DEPTH` by the string
:data:`TOO_DEEP`. The document keeps its shape down to that depth, so a customer stays a customer
with its id, and it stays deeper than ``shared.mapping.MAX_JSON_DEPTH``: the mapping refuses that
customer alone ("nested deeper than 512 levels"), never its page. A customer's ``raw`` is never
built from a cut document, because a customer that deep is never stored.
"""

from __future__ import annotations

import json
import re
from typing import Any

from shared.mapping import MAX_JSON_DEPTH

CUT_DEPTH = MAX_JSON_DEPTH + 64  # deeper than the mapping stores, shallower than json recurses
TOO_DEEP = "(woosync: nested too deeply to parse)"

# A whole string (escapes included) or one bracket: strings are skipped in one step.
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)


def loads(text: str | bytes) -> Any:
    """``json.loads``, except that containers nested past :data:`CUT_DEPTH` become
    :data:`TOO_DEEP` instead of raising ``RecursionError``. Invalid JSON still raises
    ``ValueError`` (``json.JSONDecodeError`` or ``UnicodeDecodeError``)."""
    try:
        return json.loads(text)
    except RecursionError:
        pass
    if isinstance(text, bytes | bytearray):
        text = text.decode("utf-8")
    return json.loads(cut(text, CUT_DEPTH))


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
