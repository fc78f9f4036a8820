"""Karlo's weights in the diffusers layout (`kakaobrain/karlo-v1-alpha`) <-> ours.

diffusers splits the stack into components:

    prior            PriorTransformer        (+ clip_mean, clip_std [1, D])
    decoder          UNet2DConditionModel
    text_proj        UnCLIPTextProjModel     (our decoder's conditioning layers)
    super_res_first  UNet2DModel             (our upsampler's `model`)
    super_res_last   UNet2DModel             (our upsampler's `last_step_model`)

Our side is grouped by submodule of `UnCLIPStack`: "prior", "decoder", "upsamplers.0", plus
"clip_stats" ({"mean": [D], "std": [D]}, the stack's buffers). Fused projections are split
per head on the diffusers side: our `c_qkv` / `qkv` rows are laid out [h0: q k v][h1: q k v]...
(head dim = prior width / heads, or the UNet's `num_head_channels`), diffusers keeps separate
`to_q`, `to_k`, `to_v` (and `add_k_proj`, `add_v_proj` for `encoder_kv`); conv1d k=1 weights
become linear weights. The mapping is derived by rules from the block arithmetic of the
config, so it holds at any size (checked against the Karlo key map in the tests).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Mapping, Optional, Union

import torch
import torch.nn as nn

from .clip import ClipEncoder
from .config import (
    ClipConfig,
    DecoderStageConfig,
    DiffusionConfig,
    PriorConfig,
    PriorStageConfig,
    StackConfig,
    UNetConfig,
    UpsamplerStageConfig,
)
from .karlo import CheckpointMismatchError
from .prior import EXTRA_TOKENS, PriorTransformer
from .stack import UnCLIPStack
from .unet import UNet

Tensor = torch.Tensor
StateDicts = Mapping[str, Mapping[str, Tensor]]

COMPONENTS = ("prior", "decoder", "text_proj", "super_res_first", "super_res_last")
GROUPS = ("prior", "decoder", "upsamplers.0", "clip_stats")
# our decoder conditioning layer -> UnCLIPTextProjModel name
TEXT_PROJ = {
    "text_seq_proj.0": "encoder_hidden_states_proj",
    "text_seq_proj.1": "text_encoder_hidden_states_norm",
    "clip_tok_proj": "clip_extra_context_tokens_proj",
    "text_feat_proj": "embedding_proj",
    "clip_emb": "clip_image_embeddings_project_to_time_embeddings",
    "cf_param": "learned_classifier_free_guidance_embeddings",
}
TEXT_PROJ_LAYERS = {k.split(".")[0] for k in TEXT_PROJ}
RESNET = {
    "in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut",
}
TIME_EMBED = {"time_embed.0": "time_embedding.linear_1", "time_embed.2": "time_embedding.linear_2"}
UNET_ENDS = {"out.0": "conv_norm_out", "out.2": "conv_out", "input_blocks.0.0": "conv_in"}
PRIOR_TOP = {
    "clip_img_proj": "proj_in", "text_emb_proj": "embedding_proj", "text_enc_proj": "encoder_hidden_states_proj",
    "positional_embedding": "positional_embedding", "prd_emb": "prd_embedding", "final_ln": "norm_out",
    "out_proj": "proj_to_clip_embeddings",
}
PRIOR_BLOCK = {"attn.c_proj": "attn1.to_out.0", "mlp.c_fc": "ff.net.0.proj", "mlp.c_proj": "ff.net.2",
               "ln_1": "norm1", "ln_2": "norm3"}


@dataclass(frozen=True)
class Target:
    """Where one of our tensors goes: a diffusers component and one key per part.

    parts > 1: a fused projection [heads * parts * head_dim, ...] split per head into
    `parts` tensors [heads * head_dim, ...]."""

    component: str
    keys: tuple[str, ...]
    head_dim: int = 0
    squeeze: bool = False  # conv1d k=1 weight [out, in, 1] <-> linear weight [out, in]


@dataclass(frozen=True)
class KeyMap:
    """One of our tensors (group, key, shape) and its diffusers counterpart(s) with shape."""

    group: str
    key: str
    shape: tuple[int, ...]
    target: Target
    their_shape: tuple[int, ...]

    @property
    def parts(self) -> int:
        return len(self.target.keys)

    def to_theirs(self, t: Tensor) -> dict[str, Tensor]:
        """Our tensor [shape] -> {diffusers key: tensor [their_shape]}."""
        if self.parts == 1:
            return {self.target.keys[0]: t.reshape(self.their_shape)}
        heads = self.shape[0] // (self.parts * self.target.head_dim)
        split = t.reshape(heads, self.parts, self.target.head_dim, -1).unbind(1)
        return {k: p.reshape(self.their_shape) for k, p in zip(self.target.keys, split)}

    def to_ours(self, tensors: list[Tensor]) -> Tensor:
        """The diffusers tensors of `target.keys` (in order) -> our tensor [shape]."""
        if self.parts == 1:
            return tensors[0].reshape(self.shape)
        heads = self.shape[0] // (self.parts * self.target.head_dim)
        per_head = [t.reshape(heads, self.target.head_dim, -1) for t in tensors]
        return torch.stack(per_head, dim=1).reshape(self.shape)


# ---- rules -----------------------------------------------------------------------------------


def _split(component: str, template: str, parts: str, head_dim: int, squeeze: bool = False) -> Target:
    """template with `{}` for the part name (e.g. "to_{}.weight") -> a per-head split target."""
    return Target(component, tuple(template.format(p) for p in parts), head_dim, squeeze)


def prior_target(key: str, cfg: PriorConfig) -> Target:
    """Our prior key -> diffusers `prior` key(s)."""
    m = re.fullmatch(r"transformer\.resblocks\.(\d+)\.(.+)\.(weight|bias)", key)
    if m:
        block, layer, leaf = m.groups()
        pre = f"transformer_blocks.{block}."
        if layer == "attn.c_qkv":
            return _split("prior", pre + "attn1.to_{}." + leaf, "qkv", cfg.width // cfg.heads)
        return Target("prior", (pre + PRIOR_BLOCK[layer] + "." + leaf,))
    return Target("prior", (_rename(key, {**TIME_EMBED, **PRIOR_TOP}),))


def _rename(key: str, table: Mapping[str, str]) -> str:
    """Replace the longest prefix of `key` (whole dotted components) found in `table`."""
    for src in sorted(table, key=len, reverse=True):
        if key == src or key.startswith(src + "."):
            return table[src] + key[len(src):]
    raise KeyError(f"no diffusers name for {key!r}")


def unet_block_names(cfg: UNetConfig) -> dict[str, tuple[str, str]]:
    """Our UNet layer prefixes (e.g. "input_blocks.4.0") -> (diffusers prefix, kind), kind
    being "resnet" or "attention", from the block arithmetic of the config."""
    names: dict[str, tuple[str, str]] = {}
    levels, per = len(cfg.channel_mult), cfg.num_res_blocks + 1
    for level in range(levels):
        att = (2 ** level) in cfg.attention_ds
        for i in range(cfg.num_res_blocks):
            n = 1 + level * per + i
            names[f"input_blocks.{n}.0"] = (f"down_blocks.{level}.resnets.{i}", "resnet")
            if att:
                names[f"input_blocks.{n}.1"] = (f"down_blocks.{level}.attentions.{i}", "attention")
        if level < levels - 1:
            n = 1 + level * per + cfg.num_res_blocks
            names[f"input_blocks.{n}.0"] = (f"down_blocks.{level}.downsamplers.0", "resnet")
    names.update(_middle_names(cfg))
    for u in range(levels):
        level = levels - 1 - u
        att = (2 ** level) in cfg.attention_ds
        for i in range(per):
            n = u * per + i
            names[f"output_blocks.{n}.0"] = (f"up_blocks.{u}.resnets.{i}", "resnet")
            if att:
                names[f"output_blocks.{n}.1"] = (f"up_blocks.{u}.attentions.{i}", "attention")
            if level and i == per - 1:
                names[f"output_blocks.{n}.{1 + att}"] = (f"up_blocks.{u}.upsamplers.0", "resnet")
    return names


def _middle_names(cfg: UNetConfig) -> dict[str, tuple[str, str]]:
    names = {"middle_block.0": ("mid_block.resnets.0", "resnet")}
    if cfg.attention_ds:
        names["middle_block.1"] = ("mid_block.attentions.0", "attention")
    names[f"middle_block.{1 + bool(cfg.attention_ds)}"] = ("mid_block.resnets.1", "resnet")
    return names


def unet_target(key: str, cfg: UNetConfig, component: str, blocks: dict[str, tuple[str, str]]) -> Target:
    """Our UNet key -> diffusers key(s) of `component` (decoder conditioning -> text_proj)."""
    if cfg.is_decoder and key.split(".")[0] in TEXT_PROJ_LAYERS:
        return Target("text_proj", (_rename(key, TEXT_PROJ),))
    m = re.fullmatch(r"((?:input_blocks|middle_block|output_blocks)\.\d+(?:\.\d+)?)\.(.+)", key)
    if m and m.group(1) in blocks:
        prefix, kind = blocks[m.group(1)]
        leaf = m.group(2)
        if kind == "resnet":
            return Target(component, (prefix + "." + _rename(leaf, RESNET),))
        return _attention_target(component, prefix, leaf, cfg.num_head_channels)
    return Target(component, (_rename(key, {**TIME_EMBED, **UNET_ENDS}),))


def _attention_target(component: str, prefix: str, leaf: str, head_dim: int) -> Target:
    """Our AttentionBlock leaf (e.g. "qkv.weight") -> diffusers Attention key(s)."""
    layer, kind = leaf.rsplit(".", 1)
    if layer == "qkv":
        return _split(component, prefix + ".to_{}." + kind, "qkv", head_dim, squeeze=True)
    if layer == "encoder_kv":
        return _split(component, prefix + ".add_{}_proj." + kind, "kv", head_dim, squeeze=True)
    if layer == "proj_out":
        return Target(component, (f"{prefix}.to_out.0.{kind}",), squeeze=True)
    return Target(component, (f"{prefix}.{_rename(layer, {'norm': 'group_norm'})}.{kind}",))


def _their_shape(target: Target, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape on the diffusers side: split rows per part; conv1d k=1 weights lose the k axis."""
    if len(target.keys) > 1:
        shape = (shape[0] // len(target.keys),) + shape[1:]
    if target.squeeze and len(shape) == 3:
        shape = shape[:2]
    return shape


# ---- the full map ----------------------------------------------------------------------------


def _meta_shapes(build: Callable[[], nn.Module]) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in build().state_dict().items()}


def key_maps(cfg: StackConfig) -> list[KeyMap]:
    """Every tensor of our prior, decoder, first upsampler and CLIP stats, with its
    diffusers key(s) and shape(s). Modules are built on the meta device (no memory)."""
    up = _karlo_upsampler(cfg)
    maps: list[KeyMap] = []

    def add(group: str, shapes: dict[str, tuple[int, ...]], target: Callable[[str], Target]) -> None:
        for key, shape in shapes.items():
            tgt = target(key)
            maps.append(KeyMap(group, key, shape, tgt, _their_shape(tgt, shape)))

    p = cfg.prior.model
    add("prior", _meta_shapes(lambda: PriorTransformer(p)), lambda k: prior_target(k, p))
    d = cfg.decoder.model
    dec_blocks = unet_block_names(d)
    add("decoder", _meta_shapes(lambda: UNet(d)), lambda k: unet_target(k, d, "decoder", dec_blocks))
    up_blocks = unet_block_names(up.model)
    for ours, comp in (("model", "super_res_first"), ("last_step_model", "super_res_last")):
        shapes = {f"{ours}.{k}": s for k, s in _meta_shapes(lambda: UNet(up.model)).items()}
        add("upsamplers.0", shapes,
            lambda k, c=comp, o=ours: unet_target(k[len(o) + 1:], up.model, c, up_blocks))
    for stat in ("mean", "std"):
        maps.append(KeyMap("clip_stats", stat, (p.clip_dim,), Target("prior", (f"clip_{stat}",)), (1, p.clip_dim)))
    return maps


def _karlo_upsampler(cfg: StackConfig) -> UpsamplerStageConfig:
    if not cfg.upsamplers or not cfg.upsamplers[0].has_last_step_model:
        raise ValueError("the diffusers unCLIP layout needs a first upsampler with a last-step model")
    return cfg.upsamplers[0]


def ours_to_diffusers(state_dicts: StateDicts, cfg: StackConfig) -> dict[str, dict[str, Tensor]]:
    """{"prior", "decoder", "upsamplers.0", optional "clip_stats"} state dicts (ours) ->
    {component: state dict} in diffusers' layout. Missing clip_stats: mean 0, std 1."""
    stats = {"mean": torch.zeros(cfg.prior.model.clip_dim), "std": torch.ones(cfg.prior.model.clip_dim)}
    groups = {"clip_stats": stats, **state_dicts}
    maps = key_maps(cfg)
    _check_keys(groups, {(m.group, m.key) for m in maps}, "our")
    out: dict[str, dict[str, Tensor]] = {c: {} for c in COMPONENTS}
    for m in maps:
        out[m.target.component].update(m.to_theirs(groups[m.group][m.key]))
    return out


def diffusers_to_ours(component_state_dicts: StateDicts, cfg: StackConfig) -> dict[str, dict[str, Tensor]]:
    """{component: state dict} in diffusers' layout (prior, decoder, text_proj,
    super_res_first, super_res_last) -> {"prior", "decoder", "upsamplers.0", "clip_stats"}."""
    maps = key_maps(cfg)
    _check_keys(component_state_dicts, {(m.target.component, k) for m in maps for k in m.target.keys}, "diffusers")
    out: dict[str, dict[str, Tensor]] = {g: {} for g in GROUPS}
    for m in maps:
        sd = component_state_dicts[m.target.component]
        out[m.group][m.key] = m.to_ours([sd[k] for k in m.target.keys])
    return out


def _check_keys(groups: StateDicts, want: set[tuple[str, str]], side: str) -> None:
    """Raise CheckpointMismatchError listing missing and unexpected (group, key) pairs."""
    have = {(g, k) for g, sd in groups.items() for k in sd}
    missing = sorted(want - have)
    extra = sorted(have - want)
    if missing or extra:
        raise CheckpointMismatchError(
            f"{side} state dicts do not match the config: {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(extra)} unexpected (e.g. {extra[:3]})"
        )


def stack_state_dicts(stack: UnCLIPStack) -> dict[str, dict[str, Tensor]]:
    """Our groups of a stack: prior, decoder, upsamplers.0 and clip_stats."""
    return {
        "prior": stack.prior.state_dict(), "decoder": stack.decoder.state_dict(),
        "upsamplers.0": stack.upsamplers[0].state_dict(),
        "clip_stats": {"mean": stack.clip_mean, "std": stack.clip_std},
    }


# ---- diffusers configs -----------------------------------------------------------------------


def diffusers_model_configs(cfg: StackConfig) -> dict[str, dict]:
    """Constructor kwargs of each diffusers component for a stack of Karlo's architecture
    (as diffusers' Karlo conversion sets them), plus the three UnCLIPScheduler configs."""
    p, d, up = cfg.prior.model, cfg.decoder.model, _karlo_upsampler(cfg)
    for part in (p, d):
        if getattr(part, "text_width", None) not in (None, part.clip_dim):
            raise ValueError("diffusers' unCLIP projects CLIP token states of width clip_dim only")
    sr = _unet2d_config(up.model)
    return {
        "prior": {"num_attention_heads": p.heads, "attention_head_dim": p.width // p.heads, "num_layers": p.layers,
                  "embedding_dim": p.clip_dim, "num_embeddings": p.text_ctx, "additional_embeddings": EXTRA_TOKENS},
        "decoder": _unet2d_condition_config(d),
        "text_proj": {"clip_extra_context_tokens": d.clip_tokens, "clip_embeddings_dim": d.clip_dim,
                      "time_embed_dim": d.model_channels * 4, "cross_attention_dim": d.xf_width},
        "super_res_first": sr,
        "super_res_last": dict(sr),
        "prior_scheduler": scheduler_config(cfg.prior.diffusion),
        "decoder_scheduler": scheduler_config(cfg.decoder.diffusion),
        "super_res_scheduler": scheduler_config(up.diffusion),
    }


def _unet_common(u: UNetConfig) -> dict:
    return {
        "sample_size": u.image_size, "in_channels": u.in_channels, "out_channels": u.out_channels,
        "layers_per_block": u.num_res_blocks, "block_out_channels": tuple(u.model_channels * m for m in u.channel_mult),
        "norm_num_groups": u.norm_groups,
        "resnet_time_scale_shift": "scale_shift" if u.use_scale_shift_norm else "default",
    }


def _unet2d_condition_config(u: UNetConfig) -> dict:
    if not u.attention_ds or not u.resblock_updown:
        raise ValueError("diffusers' unCLIP decoder needs attention in the middle block and resblock up/down")
    att = [(2 ** lvl) in u.attention_ds for lvl in range(len(u.channel_mult))]
    down = tuple("SimpleCrossAttnDownBlock2D" if a else "ResnetDownsampleBlock2D" for a in att)
    upb = tuple("SimpleCrossAttnUpBlock2D" if a else "ResnetUpsampleBlock2D" for a in att[::-1])
    return {**_unet_common(u), "down_block_types": down, "up_block_types": upb,
            "mid_block_type": "UNetMidBlock2DSimpleCrossAttn", "cross_attention_dim": u.xf_width,
            "class_embed_type": "identity", "attention_head_dim": u.num_head_channels}


def _unet2d_config(u: UNetConfig) -> dict:
    if u.attention_ds or u.is_decoder:
        raise ValueError("diffusers' unCLIP super-resolution nets are conv-only")
    n = len(u.channel_mult)
    return {**_unet_common(u), "down_block_types": ("ResnetDownsampleBlock2D",) * n,
            "up_block_types": ("ResnetUpsampleBlock2D",) * n, "add_attention": False}


def scheduler_config(dc: DiffusionConfig) -> dict:
    """UnCLIPScheduler kwargs equivalent to one of our stages' DiffusionConfig."""
    if dc.schedule != "squaredcos_cap_v2" or dc.prediction == "v" or dc.variance == "fixed_large":
        raise ValueError(f"UnCLIPScheduler cannot express {dc}")
    return {
        "num_train_timesteps": dc.num_timesteps,
        "variance_type": "learned_range" if dc.variance == "learned_range" else "fixed_small_log",
        "prediction_type": "epsilon" if dc.prediction == "eps" else "sample",
        "clip_sample": dc.clip_x0 is not None, "clip_sample_range": dc.clip_x0 if dc.clip_x0 is not None else 1.0,
    }


def stack_config_from_diffusers(configs: Mapping[str, Mapping], clip: Optional[ClipConfig] = None,
                                name: str = "diffusers-unclip") -> StackConfig:
    """Our StackConfig from the `config.json` of each diffusers model component (keys as in
    COMPONENTS). Sampling settings are Karlo's (the scheduler configs are not read:
    diffusers' Karlo config clamps the prior's x0 at 5, Karlo at 10). CLIP defaults to
    ViT-L-14 (Karlo's)."""
    pc, dc, tp = configs["prior"], configs["decoder"], configs["text_proj"]
    prior = PriorConfig(clip_dim=pc["embedding_dim"], text_ctx=pc["num_embeddings"],
                        width=pc["num_attention_heads"] * pc["attention_head_dim"], layers=pc["num_layers"],
                        heads=pc["num_attention_heads"])
    dec = _unet_from_diffusers(dc, dc["down_block_types"])
    dec = replace(dec, clip_dim=tp["clip_embeddings_dim"], text_ctx=pc["num_embeddings"],
                   xf_width=dc["cross_attention_dim"], clip_tokens=tp["clip_extra_context_tokens"],
                   num_head_channels=dc["attention_head_dim"])
    sr = replace(_unet_from_diffusers(configs["super_res_first"], ()), clip_dim=None,
                  low_res_channels=configs["super_res_first"]["in_channels"] // 2)
    base = StackConfig.karlo()
    return StackConfig(
        name=name, clip=clip or ClipConfig(),
        prior=PriorStageConfig(model=prior, diffusion=base.prior.diffusion),
        decoder=DecoderStageConfig(model=dec, diffusion=base.decoder.diffusion),
        upsamplers=(UpsamplerStageConfig(model=sr, diffusion=base.upsamplers[0].diffusion, has_last_step_model=True,
                                         name=f"sr_{dec.image_size}_{sr.image_size}"),),
    )


def _unet_from_diffusers(c: Mapping, down_types: tuple) -> UNetConfig:
    """The shared UNet fields of a diffusers UNet config; attention where the down block
    type has cross attention."""
    chans = list(c["block_out_channels"])
    mc = chans[0]
    size = c.get("sample_size") or 64
    att = tuple(size // (2 ** i) for i, t in enumerate(down_types) if "CrossAttn" in t)
    return UNetConfig(
        image_size=size, in_channels=c["in_channels"], out_channels=c["out_channels"], model_channels=mc,
        channel_mult=tuple(ch // mc for ch in chans), num_res_blocks=c["layers_per_block"],
        attention_resolutions=att, use_scale_shift_norm=c.get("resnet_time_scale_shift") == "scale_shift",
        norm_groups=c.get("norm_num_groups", 32),
    )


# ---- loader ----------------------------------------------------------------------------------


def read_diffusers_dir(path: Union[str, Path], dtype: torch.dtype = torch.float32,
                      ) -> tuple[dict[str, dict], dict[str, dict[str, Tensor]]]:
    """A diffusers unCLIP folder -> ({component: config.json}, {component: state dict}), each
    from its plain safetensors file or a variant's (`hub_variants`; the one of `dtype` first)."""
    import json

    from safetensors.torch import load_file

    from .checkpoints import require_file
    from .hub_variants import safetensors_file

    path = Path(path)
    configs, sds = {}, {}
    for comp in COMPONENTS:
        configs[comp] = json.loads(require_file(path / comp / "config.json", f"{comp} config").read_text())
        weights = safetensors_file(path / comp, "diffusion_pytorch_model", dtype)
        sds[comp] = load_file(str(require_file(weights, f"{comp} weights")))
    return configs, sds


def load_karlo_snapshot(path: Union[str, Path], device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32) -> UnCLIPStack:
    """Our stack from a Karlo snapshot as downloaded (see `load_diffusers_dir`), its CLIP the
    snapshot's own transformers towers (`hf_clip.HFClip`: text_encoder/ and tokenizer/, and
    image_encoder/ with feature_extractor/ where the folder has them), on device."""
    from .hf_clip import load_hf_clip

    path = Path(path)
    return load_diffusers_dir(path, dtype=dtype, clip_module=load_hf_clip(path, dtype)).to(device)


def load_diffusers_dir(
    path: Union[str, Path], clip_weights: Optional[Union[str, Path]] = None, cfg: Optional[StackConfig] = None,
    dtype: torch.dtype = torch.float32, allow_random_clip: bool = False, clip: Optional[ClipConfig] = None,
    clip_module: Optional[nn.Module] = None,
) -> UnCLIPStack:
    """Our stack from a diffusers unCLIP folder (prior/, decoder/, text_proj/,
    super_res_first/, super_res_last/, each config.json + diffusion_pytorch_model.safetensors).

    CLIP is `clip_module` (e.g. the snapshot's transformers towers, `load_karlo_snapshot`), or
    open_clip with the state dict `clip_weights`; without either, CLIP stays randomly
    initialised only if allow_random_clip (tests). `cfg` defaults to the one the component
    configs describe, with CLIP `clip` (default ViT-L-14)."""
    from .checkpoints import MissingWeightsError, assign_state, build_on_meta, materialize_buffers
    from .karlo import read_clip_weights

    if clip_weights is None and clip_module is None and not allow_random_clip:
        raise MissingWeightsError("load_diffusers_dir needs the open_clip CLIP weights (clip_weights=...)")
    configs, sds = read_diffusers_dir(path, dtype)
    cfg = cfg or stack_config_from_diffusers(configs, clip=clip)
    if len(cfg.upsamplers) != 1:
        raise ValueError("a diffusers unCLIP folder holds exactly one upsampler (super_res_first/last)")
    groups = diffusers_to_ours(sds, cfg)
    stack = build_on_meta(cfg)
    cpu = torch.device("cpu")
    for name in ("prior", "decoder", "upsamplers.0"):
        assign_state(stack.get_submodule(name), groups[name], dtype, cpu)
    if clip_module is not None:
        stack.clip = clip_module
    elif clip_weights is not None:
        assign_state(stack.clip.model, read_clip_weights(Path(clip_weights)), torch.float32, cpu)
    else:
        stack.clip = ClipEncoder(cfg.clip)
    stack.register_buffer("clip_mean", groups["clip_stats"]["mean"].float().to(cpu))
    stack.register_buffer("clip_std", groups["clip_stats"]["std"].float().to(cpu))
    materialize_buffers(stack, cpu)
    return stack.eval().requires_grad_(False)

