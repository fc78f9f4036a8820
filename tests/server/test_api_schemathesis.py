"""Property-based requests generated from /openapi.json: no input makes the server answer 5xx.

Generated step counts, image counts and frames are capped before sending so that the
accepted requests stay cheap on CPU; everything else is as schemathesis generates it.
"""

from __future__ import annotations

from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402  (after the import check)

from .conftest import ServerProc  # noqa: E402

CAPS = {"prior_steps": 2, "decoder_steps": 2, "upsampler_steps": 2, "best_of": 1, "n": 2, "frames": 3}


def operations(server: ServerProc) -> list[Any]:
    """Every operation of the served schema."""
    schema = schemathesis.openapi.from_url(server.url("/openapi.json"))
    return [result.ok() for result in schema.get_all_operations()]


def cap(body: Any) -> None:
    """Cap expensive numeric fields in place (JSON or multipart bodies)."""
    if not isinstance(body, dict):
        return
    for key, limit in CAPS.items():
        value = body.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > limit:
            body[key] = limit
    if isinstance(body.get("thetas"), list):
        body["thetas"] = body["thetas"][:3]


@pytest.mark.slow
def test_no_server_errors(server: ServerProc) -> None:
    """Up to 50 generated requests per operation (schemathesis' pytest plugin is not used:
    its fixture loader does not run under pytest 9)."""
    ops = operations(server)
    assert any(op.path == "/v1/images/edits" for op in ops)
    for op in ops:
        @settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=op.as_strategy())
        def check(case: Any) -> None:
            cap(case.body)
            response = case.call(base_url=server.base_url, timeout=60)
            assert response.status_code < 500, (case.method, case.path, case.body, response.text[:500])
            assert "x-request-id" in response.headers

        check()
