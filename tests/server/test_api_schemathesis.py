"""Property-based requests generated from /openapi.json: no input makes the server answer 5xx.

Generated step counts, image counts and frames are capped before sending, and the step
counts and frames a request leaves out are set to those caps (the model's defaults are
what every other test runs), so that the accepted requests stay cheap on CPU. On a coin
that hypothesis tosses, the uploads (but an interpolation's two) are a real 48x32 RGBA PNG,
as their own mask too, beside schemathesis' own 1x1 images, so that the generated fields
also reach inpainting of a wide image; everything else is as schemathesis generates it.
"""

from __future__ import annotations

from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings, strategies  # noqa: E402  (after the import check)

from .conftest import ServerProc, half_transparent, png  # noqa: E402

CAPS = {"prior_steps": 2, "decoder_steps": 2, "upsampler_steps": 2, "best_of": 1, "n": 2, "frames": 3}
FILLED = ("prior_steps", "decoder_steps", "upsampler_steps", "frames")  # set to their caps when left out
WIDE = png(48, half_transparent(48)[:32], seed=1, height=32)  # 48x32, its left half to edit


def operations(server: ServerProc) -> list[Any]:
    """Every operation of the served schema."""
    schema = schemathesis.openapi.from_url(server.url("/openapi.json"))
    return [result.ok() for result in schema.get_all_operations()]


def fields(op: Any) -> frozenset[str]:
    """The body fields the operation takes (none for an operation without a body)."""
    return frozenset(name for body in op.body for name in body.definition.get("schema", {}).get("properties", {}))


def cap(body: Any, accepted: frozenset[str], real_image: bool) -> None:
    """Cap expensive numeric fields in place (JSON or multipart bodies), set those of
    FILLED that the operation takes and the body leaves out, and with `real_image` make
    the uploads WIDE."""
    if not isinstance(body, dict):
        return
    body.update({key: CAPS[key] for key in FILLED if key in accepted and key not in body})
    if "image" in body and real_image and "thetas" not in accepted:  # (two files do not fit its schema)
        body["image"] = WIDE
        if "mask" in body:
            body["mask"] = WIDE
    for key, limit in CAPS.items():
        value = body.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > limit:
            body[key] = limit
    if isinstance(body.get("thetas"), list):
        body["thetas"] = body["thetas"][:3]


def probe(op: Any, server: ServerProc) -> None:
    """Up to 50 generated requests to one operation: none answers 5xx, each has a request id."""
    accepted = fields(op)

    @settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(case=op.as_strategy(), real_image=strategies.booleans())
    def check(case: Any, real_image: bool) -> None:
        cap(case.body, accepted, real_image)
        response = case.call(base_url=server.base_url, timeout=60)
        assert response.status_code < 500, (case.method, case.path, case.body, response.text[:500])
        assert "x-request-id" in response.headers

    check()


@pytest.mark.slow
def test_no_server_errors(server: ServerProc) -> None:
    """Every operation of the served schema probed (schemathesis' pytest plugin is not
    used: its fixture loader does not run under pytest 9)."""
    ops = operations(server)
    assert any(op.path == "/v1/images/edits" for op in ops)
    for op in ops:
        probe(op, server)
