"""The error table: one row per failure, codes from the seeds, nothing ambiguous."""

from __future__ import annotations

import inspect

import engine.errors as errors
from engine.errors import Failure, RapportError


def test_every_exception_points_at_a_row_and_every_row_is_used() -> None:
    exceptions = [
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, RapportError) and "failure" in cls.__dict__
    ]
    assert {cls.failure for cls in exceptions} == set(Failure)


def test_seed_codes() -> None:
    # Seed 000 (/api/) and seed 004 (/api/v1/) name these exactly.
    assert Failure.MISSING_API_KEY[1:3] == ("auth.unauthorized", "missing_api_key")
    assert Failure.INVALID_API_KEY[1:3] == ("auth.api_key_invalid", "invalid_api_key")
    assert Failure.DISABLED_API_KEY[1:3] == ("auth.api_key_disabled", "invalid_api_key")
    assert Failure.VALIDATION_FAILED[1:3] == ("validation.failed", "invalid_payload")
    assert Failure.NOT_FOUND.code == "resource.not_found"
    assert Failure.CONFLICT.code == "resource.conflict"
    assert Failure.INTERNAL[1:3] == ("server.error", "internal_error")
    assert all(f.status == 401 and f.close_code == 4001 for f in Failure if "API_KEY" in f.name)


def test_session_rows() -> None:
    # Seed 000 names the limits; the interaction and duration limits are close codes only.
    assert Failure.SESSION_TIME_LIMIT[:2] == (409, "limits.session_time_limit")
    assert Failure.SESSION_INTERACTION_LIMIT.code == "limits.session_interaction_limit"
    assert Failure.SESSION_DURATION_LIMIT.code == "limits.session_duration_limit"
    # docs/architecture.md, "Live sessions": the close codes a session's socket ends with.
    closes = {
        Failure.SESSION_INTERACTION_LIMIT: 4005,
        Failure.SESSION_DURATION_LIMIT: 4006,
        Failure.SESSION_TOKEN_INVALID: 4001,
        Failure.SESSION_GONE: 4004,
        Failure.SESSION_REPLACED: 4009,
    }
    assert {failure: failure.close_code for failure in closes} == closes


def test_unavailable_errors_say_when_to_retry() -> None:
    assert errors.StateUnavailable().headers == {"Retry-After": "1"}
    assert errors.StateUnavailable().failure.status == 503


def test_codes_are_namespaced_on_api_and_snake_case_on_v1() -> None:
    for failure in Failure:
        assert "." in failure.code, failure
        assert failure.v1_code.replace("_", "").isalpha() and failure.v1_code.islower(), failure
