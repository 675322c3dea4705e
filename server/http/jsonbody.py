"""JSON from a client, read safely: every way a body can be bad is ``InvalidRequest`` (400), never a 500.

``json.loads`` raises ``RecursionError`` for deeply nested input (``[[[[...`` 5,000 deep, issue 22), which
no ``except ValueError`` catches; invalid UTF-8 raises ``UnicodeDecodeError``. :func:`loads` turns each into
a clear message. What is parsed must then be walked without recursion (or with a bounded depth): a
document just under the parser's limit would still overflow a recursive walk.
"""

from __future__ import annotations

import json
from typing import Any

from emotion2vec_serving.server.calls.errors import InvalidRequest

__all__ = ["loads"]


def loads(raw: bytes | bytearray | memoryview | str, what: str = "the request body") -> Any:
    """The JSON value of ``raw``; ``InvalidRequest`` naming ``what`` when it is not valid JSON."""
    try:
        return json.loads(bytes(raw) if isinstance(raw, memoryview) else raw)
    except RecursionError:
        raise InvalidRequest(f"{what} is JSON nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer of too many digits
        raise InvalidRequest(f"{what} is not valid JSON: {exc}") from None
