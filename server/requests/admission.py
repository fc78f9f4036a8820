"""What a request may cost: the bounds on its steps and best_of (settings), and the
admission check that refuses at once what cannot finish within its deadline."""

from __future__ import annotations

from typing import Optional

from pydantic import BaseModel

from pipelines.stage_keys import DECODER, PRIOR, UPSAMPLER

from ..errors import bad_request
from ..runtime import Runtime

# The request field of each stage's steps.
STEP_FIELDS = {PRIOR: "prior_steps", DECODER: "decoder_steps", UPSAMPLER: "upsampler_steps"}


def check_limits(rt: Runtime, params: BaseModel) -> None:
    """Steps per stage and best_of within the server's bounds (settings)."""
    limits = {f: rt.settings.max_steps for f in STEP_FIELDS.values()} | {"best_of": rt.settings.max_best_of}
    for name, limit in limits.items():
        value = getattr(params, name, None)
        if value is not None and value > limit:
            raise bad_request(name, f"'{name}' must be at most {limit} on this server, got {value}.")


def admit(rt: Runtime, params: BaseModel, work: dict[str, int]) -> Optional[float]:
    """The operation's estimated run time alone (None before the engine has measured its
    stages). With `admission_check`, a request that cannot finish within the deadline even
    alone is refused: 400 naming the field that costs most."""
    cost_s, deadline_s = rt.engine.estimate(work), rt.settings.default_deadline_s
    if cost_s is None or cost_s <= deadline_s or not rt.settings.admission_check:
        return cost_s
    stage = max(work, key=lambda k: work[k] * rt.engine.step_s(k))
    field = STEP_FIELDS[stage.partition(".")[0]]
    param = field if getattr(params, field, None) is not None or not getattr(params, "n", 1) > 1 else "n"
    raise bad_request(param, f"This request would take about {cost_s:.0f} s, more than the {deadline_s:g} s "
                             f"deadline (mostly in the {stage} stage); ask for fewer images or steps.",
                      "request_too_costly")
