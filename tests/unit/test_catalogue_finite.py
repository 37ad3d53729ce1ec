"""recsys-catalogue's upserts carry finite values as the version stores them (float32): a numeric attribute of
1e300 or "-inf" would be stored as an infinity that a range filter's bounds let through, and a vector component of
1e300 passes a float64 check only to be inf once cast. Each is refused naming its line and field."""

from __future__ import annotations

import json

import pytest

from recsys_client.upserts import CatalogueError, read_upserts


def _line(**fields) -> str:
    return json.dumps({"id": "x", "vector": [0.5, 0.5], **fields})


@pytest.mark.parametrize("value", [1e300, -1e300, "-inf", "inf", "nan", "1997", True, False, [1997], {"y": 1}])
def test_a_numeric_attribute_that_is_not_a_finite_float32_number_is_refused_naming_it(value):
    with pytest.raises(CatalogueError, match=r"^line 1 \(id 'x'\): numeric 'year' must be a finite number"):
        read_upserts([_line(numeric={"year": value})], 2, frozenset(), frozenset({"year"}))


def test_a_numeric_attribute_given_null_or_left_out_is_missing_and_a_number_is_kept():
    delta = read_upserts([_line(numeric={"year": None}), json.dumps({"id": "y", "vector": [1, 0]}),
                          json.dumps({"id": "z", "vector": [1, 0], "numeric": {"year": 1997}}),
                          json.dumps({"id": "w", "vector": [1, 0], "numeric": {"year": -3e38}})],
                         2, frozenset(), frozenset({"year"}))
    year = delta.attributes.numeric["year"]
    assert year[:2].tolist() != year[:2].tolist()  # NaN: missing
    assert year[2:].tolist() == pytest.approx([1997.0, -3e38], rel=1e-6)


@pytest.mark.parametrize("component", [1e300, -1e39])
def test_a_vector_component_beyond_float32_is_refused_naming_its_line(component):
    lines = [json.dumps({"id": "fine", "vector": [0.5, 0.5]}), json.dumps({"id": "huge", "vector": [component, 0]})]
    with pytest.raises(CatalogueError, match=r"^line 2 \(id 'huge'\): vector must be 2 finite numbers"):
        read_upserts(lines, 2, frozenset(), frozenset())


@pytest.mark.parametrize("component", [True, "0.5"])
def test_a_vector_component_that_is_not_a_number_is_refused(component):
    with pytest.raises(CatalogueError, match=r"^line 1 \(id 'x'\): vector must be 2 finite numbers"):
        read_upserts([json.dumps({"id": "x", "vector": [component, 0.5]})], 2, frozenset(), frozenset())
