"""Exponential moving average of a module's weights (what the exported model uses)."""

from __future__ import annotations

import torch
import torch.nn as nn


class EMA:
    """Shadow copies of every floating parameter and buffer of a module, kept in fp32.

    The decay warms up as min(decay, (1 + step) / (10 + step)), so early averages are not
    dominated by the random initialisation."""

    def __init__(self, module: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().float().clone() for k, v in module.state_dict().items() if v.is_floating_point()}

    def rate(self, step: int) -> float:
        """The decay used after optimizer step `step` (0-based)."""
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, module: nn.Module, step: int) -> None:
        """shadow <- d * shadow + (1 - d) * current."""
        d = self.rate(step)
        for k, v in module.state_dict().items():
            if k in self.shadow:
                self.shadow[k].lerp_(v.detach().float(), 1.0 - d)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        missing = set(self.shadow) - set(sd)
        if missing:
            raise KeyError(f"EMA state lacks {sorted(missing)[:5]}")
        for k in self.shadow:
            self.shadow[k].copy_(sd[k])

    def averaged(self, module: nn.Module) -> dict[str, torch.Tensor]:
        """The module's full state dict with the averaged floating tensors."""
        return {k: self.shadow.get(k, v) for k, v in module.state_dict().items()}
