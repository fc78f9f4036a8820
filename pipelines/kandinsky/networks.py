"""The networks of a Kandinsky 2.2 model folder, loaded with diffusers' and transformers'
`from_pretrained` (local files only), and the diffusion configs of its two schedulers.

The classes come from each snapshot's model_index.json (checked by `layout.find_layout`)
and are imported by name only when a folder is loaded: the default model never needs
diffusers or transformers (the `hf` extra).
"""

from __future__ import annotations

import importlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn

from ..config import DiffusionConfig
from ..diffusion import Schedule
from ..errors import MissingExtra
from ..hub_variants import from_pretrained
from .layout import KandinskyLayout, find_layout
from .schedulers import ddpm_config, unclip_config

log = logging.getLogger(__name__)


@dataclass
class KandinskyNets:
    """prior (PriorTransformer), text_encoder (CLIPTextModelWithProjection), tokenizer
    (CLIPTokenizer), image_encoder (CLIPVisionModelWithProjection), unet
    (UNet2DConditionModel, addition_embed_type "image"), movq (VQModel), and the prior's
    and decoder's diffusion configs (from their schedulers' configs); optionally the
    inpainting decoder's UNet (9 input channels: latents, masked image latents, keep mask;
    sampled with the decoder's schedule) and the image processor's config
    (prior/image_processor/preprocessor_config.json, see `ImagePrep`)."""

    prior: nn.Module
    text_encoder: nn.Module
    tokenizer: Any
    image_encoder: nn.Module
    unet: nn.Module
    movq: nn.Module
    prior_cfg: DiffusionConfig
    decoder_cfg: DiffusionConfig
    layout: Optional[KandinskyLayout] = None
    inpaint_unet: Optional[nn.Module] = None
    image_processor: dict[str, Any] = field(default_factory=dict)
    prior_schedule: Schedule = field(init=False)
    decoder_schedule: Schedule = field(init=False)

    def __post_init__(self) -> None:
        self.prior_schedule = Schedule.from_config(self.prior_cfg)
        self.decoder_schedule = Schedule.from_config(self.decoder_cfg)

    @property
    def device(self) -> torch.device:
        return first_parameter(self.unet).device

    @property
    def movq_scale(self) -> int:
        """Pixels per latent cell: 2 ** (MoVQ levels - 1)."""
        return 2 ** (len(self.movq.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return self.unet.config.in_channels

    @property
    def native_size(self) -> int:
        """The image size the decoder was configured for: unet sample_size x movq_scale
        (a config without sample_size: 64 latent cells, diffusers' default of 512 pixels)."""
        return (self.unet.config.sample_size or 64) * self.movq_scale

    @property
    def embed_dim(self) -> int:
        """Width D of the image embeddings (the prior's samples, the decoder's condition)."""
        return self.prior.config.embedding_dim


def first_parameter(module: nn.Module) -> torch.Tensor:
    """The module's first parameter, whose device and dtype are the module's: diffusers'
    `ModelMixin.device` and `.dtype` walk every submodule first (about 1 ms a call on the
    real UNet, three calls a decoder step)."""
    return next(module.parameters())


def dtype_of(module: nn.Module) -> torch.dtype:
    """The module's dtype (see `first_parameter`)."""
    return first_parameter(module).dtype


def load_kandinsky(path: Path, device: str | torch.device = "cpu",
                   dtype: torch.dtype = torch.float32) -> KandinskyNets:
    """The networks of a Kandinsky model folder (see layout.py) on device, in dtype."""
    layout = find_layout(Path(path))
    device = torch.device(device)

    def net(snapshot: str, name: str) -> Any:
        return load_component(layout, snapshot, name, device, dtype)

    nets = KandinskyNets(
        prior=net("prior", "prior"), text_encoder=net("prior", "text_encoder"), tokenizer=net("prior", "tokenizer"),
        image_encoder=net("prior", "image_encoder"), unet=net("decoder", "unet"), movq=net("decoder", "movq"),
        prior_cfg=unclip_config(scheduler_config(layout, "prior")),
        decoder_cfg=ddpm_config(scheduler_config(layout, "decoder")), layout=layout,
        image_processor=processor_config(layout))
    if layout.has_inpaint:
        if ddpm_config(scheduler_config(layout, "decoder-inpaint")) != nets.decoder_cfg:
            raise ValueError(f"{layout.folder('decoder-inpaint')}: its scheduler differs from the decoder's; "
                             "the inpainting decoder is sampled with the decoder's")
        nets.inpaint_unet = net("decoder-inpaint", "unet")
    log.info("loaded Kandinsky 2.2 from %s (%s, %s)", path, device, dtype)
    return nets


def load_component(layout: KandinskyLayout, snapshot: str, name: str, device: torch.device,
                   dtype: torch.dtype) -> Any:
    """One component by the (library, class) its model_index.json names, from its plain
    weights or a variant (hub_variants.py); modules are moved to device and dtype, in eval
    mode, without gradients."""
    library, cls = layout.classes[snapshot][name]
    folder = layout.folder(snapshot) / name
    kwargs = {"torch_dtype": dtype} if library == "diffusers" else {}  # transformers' keyword changed in 4.56
    try:
        module = importlib.import_module(library)
    except ImportError as err:
        raise MissingExtra("a Kandinsky 2.2 folder", "hf", err) from err
    loaded = from_pretrained(getattr(module, cls), folder, dtype, **kwargs)
    if isinstance(loaded, nn.Module):
        loaded = loaded.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return loaded


def processor_config(layout: KandinskyLayout) -> dict[str, Any]:
    """The prior snapshot's image_processor/preprocessor_config.json ({} without one)."""
    path = layout.folder("prior") / "image_processor" / "preprocessor_config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def scheduler_config(layout: KandinskyLayout, snapshot: str) -> dict[str, Any]:
    """A snapshot's scheduler/scheduler_config.json."""
    return json.loads((layout.folder(snapshot) / "scheduler" / "scheduler_config.json").read_text())
