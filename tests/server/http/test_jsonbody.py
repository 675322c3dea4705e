"""server/http/jsonbody.py: every bad JSON body is InvalidRequest (400), nesting and huge integers too."""

from __future__ import annotations

import pytest

from emotion2vec_serving.server.calls.errors import InvalidRequest
from emotion2vec_serving.server.http import jsonbody


@pytest.mark.parametrize("raw", [b"[" * 5000 + b"]" * 5000, b'{"a": ' * 5000 + b"1" + b"}" * 5000])
def test_deep_nesting_is_invalid_request(raw: bytes) -> None:
    with pytest.raises(InvalidRequest, match="nested too deeply"):
        jsonbody.loads(raw)


@pytest.mark.parametrize("raw", [b"{not json", b"\xff\xfe", b"1" * 5000])
def test_other_bad_bodies_are_invalid_request(raw: bytes) -> None:
    with pytest.raises(InvalidRequest, match="not valid JSON"):
        jsonbody.loads(raw, "the request body")


def test_valid_json_is_returned() -> None:
    assert jsonbody.loads(memoryview(b'{"inputs": [1]}')) == {"inputs": [1]}
