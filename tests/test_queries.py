"""Query strings as typed values (api.queries): defaults, bounds, and a 400 naming the field."""

from __future__ import annotations

import msgspec
import pytest

from api.queries import Limit, Paging, parse_query
from engine.errors import ValidationFailed


class Sorted(msgspec.Struct, forbid_unknown_fields=True):
    limit: Limit = 50
    sort_by: str = "created_at"


def test_values_convert_from_their_text_and_defaults_fill_the_rest() -> None:
    assert parse_query({}, Paging) == Paging(limit=50, offset=0)
    assert parse_query({"limit": "200", "offset": "1000000000"}, Paging) == Paging(200, 10**9)
    assert parse_query({"colour": "blue"}, Paging) == Paging()  # Paging ignores the unknown


@pytest.mark.parametrize(
    ("params", "field"),
    [({"limit": "0"}, "limit"), ({"limit": "201"}, "limit"), ({"limit": "ten"}, "limit"),
     ({"offset": "-1"}, "offset"), ({"offset": str(10**9 + 1)}, "offset")],
)  # fmt: skip
def test_a_bad_value_is_validation_failed_naming_it(params: dict[str, str], field: str) -> None:
    with pytest.raises(ValidationFailed) as refused:
        parse_query(params, Paging)
    assert refused.value.errors is not None and list(refused.value.errors) == [field]


def test_an_unknown_parameter_is_refused_where_the_struct_forbids_it() -> None:
    with pytest.raises(ValidationFailed) as refused:
        parse_query({"colour": "blue"}, Sorted)
    assert refused.value.errors is not None and "colour" in str(refused.value.errors)
    assert parse_query({"sort_by": "label", "limit": "2"}, Sorted) == Sorted(2, "label")
