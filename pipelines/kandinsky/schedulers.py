"""diffusers scheduler configs (scheduler_config.json) as our `DiffusionConfig`s.

The samplers themselves are ours (pipelines/diffusion.py): these configs set the noise
schedule, the timestep spacing and the prediction/variance kinds so that our steps compute
what diffusers' UnCLIPScheduler (the prior) and DDPMScheduler (the decoder) compute.
"""

from __future__ import annotations

from typing import Any, Mapping

from ..config import DiffusionConfig

PREDICTIONS = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
VARIANCES = {"fixed_small": "fixed_small", "fixed_small_log": "fixed_small", "learned_range": "learned_range"}
SCHEDULES = ("linear", "squaredcos_cap_v2")
# The classes' defaults, for keys a config leaves out (save_pretrained writes them all)
UNCLIP_DEFAULTS = {"num_train_timesteps": 1000, "variance_type": "fixed_small_log", "clip_sample": True,
                   "clip_sample_range": 1.0, "prediction_type": "epsilon", "beta_schedule": "squaredcos_cap_v2"}
DDPM_DEFAULTS = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear",
                 "variance_type": "fixed_small", "clip_sample": True, "clip_sample_range": 1.0,
                 "prediction_type": "epsilon", "thresholding": False, "timestep_spacing": "leading",
                 "steps_offset": 0}


def _lookup(table: Mapping[str, str], value: Any, what: str) -> str:
    if value not in table:
        raise ValueError(f"unsupported scheduler {what} {value!r} (supported: {sorted(table)})")
    return table[value]


def _common(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The fields every diffusers scheduler config shares (cfg with its class's defaults)."""
    schedule = cfg["beta_schedule"]
    if schedule not in SCHEDULES or cfg.get("trained_betas") is not None:
        raise ValueError(f"unsupported beta schedule {schedule!r} (supported: {list(SCHEDULES)})")
    out = {"num_timesteps": int(cfg["num_train_timesteps"]), "schedule": schedule,
           "prediction": _lookup(PREDICTIONS, cfg["prediction_type"], "prediction_type"),
           "variance": _lookup(VARIANCES, cfg["variance_type"], "variance_type"),
           "clip_x0": float(cfg["clip_sample_range"]) if cfg["clip_sample"] else None}
    if schedule == "linear":
        out |= {"beta_start": float(cfg["beta_start"]), "beta_end": float(cfg["beta_end"])}
    return out


def unclip_config(cfg: Mapping[str, Any], steps: int = 25, guidance: float = 4.0) -> DiffusionConfig:
    """An UnCLIPScheduler config (Kandinsky's prior). Defaults: KandinskyV22PriorPipeline's."""
    return DiffusionConfig(**_common(UNCLIP_DEFAULTS | dict(cfg)), spacing="unclip", steps=steps, guidance=guidance)


def ddpm_config(cfg: Mapping[str, Any], steps: int = 100, guidance: float = 4.0) -> DiffusionConfig:
    """A DDPMScheduler config (Kandinsky's decoder). Defaults: KandinskyV22Pipeline's."""
    cfg = DDPM_DEFAULTS | dict(cfg)
    if cfg["thresholding"]:
        raise ValueError("dynamic thresholding (thresholding=true) is not supported")
    spacing = cfg["timestep_spacing"]
    if spacing != "leading":
        raise ValueError(f"unsupported timestep_spacing {spacing!r} (supported: ['leading'])")
    return DiffusionConfig(**_common(cfg), spacing="leading", steps_offset=int(cfg["steps_offset"]),
                           steps=steps, guidance=guidance, sampler="ddpm")
