"""A run directory: the frozen training configuration and one folder per stage.

    runs/default/
      train.json                 TrainConfig, written when the run is created, then only read
                                 (`widen` rewrites its decoder architecture, `extend` adds
                                 the upsamplers its preset has gained)
      clip_stats.safetensors     clip_mean / clip_std of the trained CLIP (see frozen_clip.py)
      clip/checkpoint.pt         one resumable checkpoint per stage (see checkpoint.py)
      clip/log.jsonl             one JSON line per logged step
      prior/  decoder/  upsampler_0/  upsampler_1/ ...
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

from pipelines.stage_keys import file_name, upsampler_key

from .config import TrainConfig, preset

CONFIG_FILE = "train.json"


class TrainError(Exception):
    """A refused command: wrong preset for a run, a prerequisite stage unfinished, ..."""

STATS_FILE = "clip_stats.safetensors"


def stage_name(index: int) -> str:
    """The training name of upsampler `index` ("upsampler_0"): its stage key as spelled on
    disk, which names its run folder and seeds its random streams."""
    return file_name(upsampler_key(index))


@dataclass
class Run:
    """An opened run directory and its configuration."""

    path: Path
    config: TrainConfig

    def stage_dir(self, stage: str) -> Path:
        """Folder of a stage ("clip", "prior", "decoder", "upsampler_{i}"), created on demand."""
        d = self.path / stage
        d.mkdir(parents=True, exist_ok=True)
        return d

    @property
    def stats_path(self) -> Path:
        return self.path / STATS_FILE

    def stages(self) -> list[str]:
        """Every trainable stage, in training order."""
        ups = [stage_name(i) for i in range(len(self.config.stack.upsamplers))]
        return ["clip", "prior", "decoder"] + ups


def open_run(path: Path, preset_name: Optional[str] = None, seed: Optional[int] = None) -> Run:
    """Open the run at `path`, creating it from a preset ("default" if none is named) when it
    does not exist. An existing run keeps its stored configuration; naming another preset
    or seed for it is an error, so a resumed stage never trains under changed settings."""
    path = Path(path)
    cfg_file = path / CONFIG_FILE
    if cfg_file.is_file():
        cfg = TrainConfig.load(cfg_file)
        if preset_name is not None and preset_name != cfg.name:
            raise TrainError(f"run {path} was created with preset {cfg.name!r}, not {preset_name!r}")
        if seed is not None and seed != cfg.seed:
            raise TrainError(f"run {path} was created with seed {cfg.seed}, not {seed}")
        return Run(path, cfg)
    try:
        cfg = preset(preset_name or "default")
    except ValueError as err:
        raise TrainError(str(err)) from err
    if seed is not None:
        cfg = replace(cfg, seed=seed)
    path.mkdir(parents=True, exist_ok=True)
    write_config(path, cfg)
    return Run(path, cfg)


def extend(run: Run) -> list[str]:
    """Give the run the upsamplers its preset has gained since the run was created (their
    architecture and hyperparameters from the preset; the stages it has keep their stored
    settings) and rewrite its train.json. Returns one line per added stage."""
    cfg, planned = run.config, preset(run.config.name)
    have = len(cfg.stack.upsamplers)
    added = planned.stack.upsamplers[have:]
    if not added:
        return []
    stack = replace(cfg.stack, upsamplers=cfg.stack.upsamplers + added)
    run.config = replace(cfg, stack=stack, upsamplers=cfg.upsamplers + planned.upsamplers[have:])
    write_config(run.path, run.config)
    return [f"{stage_name(have + i)}: added ({u.name})" for i, u in enumerate(added)]


def write_config(path: Path, cfg: TrainConfig) -> None:
    """Write the run's train.json atomically (a new run; `widen` and `extend` rewrite it)."""
    cfg_file = Path(path) / CONFIG_FILE
    tmp = cfg_file.with_suffix(".tmp")
    tmp.write_text(cfg.to_json())
    tmp.replace(cfg_file)
