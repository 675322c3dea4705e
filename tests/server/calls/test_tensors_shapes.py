"""The OIP tensor view checks a shape before any data is converted (issue 22): the batch cap, exact element
counts (no int64 wrap), and the data size, on raw and typed contents."""

from __future__ import annotations

import pytest

from emotion2vec_serving.server.calls import tensors
from emotion2vec_serving.server.calls.errors import InvalidRequest


def test_the_count_is_exact_and_the_batch_capped() -> None:
    assert tensors.check_shape("WAVEFORM", [2**32, 2**32]) == ((2**32, 2**32), 2**64)
    assert tensors.check_shape("AUDIO", [256], max_items=256) == ((256,), 256)
    with pytest.raises(InvalidRequest, match=r"a batch of 257 items .*the limit is 256 items"):
        tensors.check_shape("AUDIO", [257], max_items=256)
    with pytest.raises(InvalidRequest, match="shape \\[batch, samples\\]"):  # the rank before the cap
        tensors.check_shape("WAVEFORM", [8000], max_items=256)
    with pytest.raises(InvalidRequest, match="negative"):
        tensors.check_shape("WAVEFORM", [1, -1])


@pytest.mark.parametrize("shape", [[2**32, 2**32], [2**62 + 1, 4], [10**30, 1], [1, 0], [3, 2**62]])
def test_shapes_beyond_the_data_are_refused_before_conversion(shape: list[int]) -> None:
    with pytest.raises(InvalidRequest):
        tensors.from_raw("WAVEFORM", "FP32", shape, b"\0" * 4)
    with pytest.raises(InvalidRequest):
        tensors.from_values("WAVEFORM", "FP32", shape, [0.0])


def test_bytes_elements_are_not_split_before_their_count_fits() -> None:
    with pytest.raises(InvalidRequest, match="holds 40000 element"):
        tensors.from_raw("AUDIO", "BYTES", [40000], b"\0" * 4 * 100)
    with pytest.raises(InvalidRequest, match="limit is 256"):
        tensors.from_raw("AUDIO", "BYTES", [40000], b"\0" * 4 * 40000, max_items=256)


def test_values_out_of_their_datatype_are_invalid() -> None:
    with pytest.raises(InvalidRequest, match="not INT32"):
        tensors.from_values("SAMPLE_RATE", "INT32", [1], [2**40])
