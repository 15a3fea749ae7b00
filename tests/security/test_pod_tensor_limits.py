"""A pod decodes request tensors before anything is allocated: zero-size tensors with huge dimensions, too many
dimensions or too many elements are a 400 that says why, never a 500 or a giant allocation."""

from __future__ import annotations

import pytest

from handlers.http_errors import http_status
from handlers.tensors import MAX_DIMENSIONS, MAX_ELEMENTS, decode_tensor
from schemas.errors import BadRequest
from schemas.manifest import Datatype, TensorSpec

ANY_ROWS = TensorSpec(name="input", datatype=Datatype.FP32, shape=[-1, 64])


@pytest.mark.parametrize(("shape", "spec"), [
    ([2**40, 2**40, 0], None),
    ([0, 64], ANY_ROWS),
    ([2**40, 0], None),
    ([1] * (MAX_DIMENSIONS + 1), None),
])
def test_zero_sized_or_deep_shapes_are_refused_before_reshaping(shape, spec):
    """The reported attack (shape [2^40, 2^40, 0] with no data answered 500) and its relatives answer 400."""
    with pytest.raises(BadRequest) as refused:
        decode_tensor({"name": "input", "datatype": "FP32", "shape": shape, "data": []}, spec=spec)
    assert http_status(refused.value) == 400
    assert refused.value.details["problem"] == "invalid_request"


def test_a_claimed_element_count_over_the_bound_is_refused_without_data():
    """A shape whose product passes MAX_ELEMENTS is refused from the shape alone, whatever data comes with it."""
    side = int(MAX_ELEMENTS ** 0.5) + 1
    with pytest.raises(BadRequest, match="elements"):
        decode_tensor({"name": "input", "datatype": "FP32", "shape": [side, side], "data": [1.0]}, spec=None)


def test_ordinary_requests_still_decode():
    """A well-formed batch of two rows decodes to the declared shape."""
    _, array = decode_tensor({"name": "input", "datatype": "FP32", "shape": [2, 64], "data": [0.5] * 128},
                             spec=ANY_ROWS)
    assert array.shape == (2, 64)
