"""The names of the stages, in one place.

Serving names a stage by its key: "prior", "decoder", "upsampler.0", "upsampler.1", ...
(Kandinsky: "prior", "decoder", "movq"; the engine's batches, progress events, metrics
labels). Files and folders cannot hold the dot as comfortably, so on disk (weights
`upsampler_0.safetensors`, training runs' `upsampler_0/`, and the training RNG streams,
which are seeded by that name) the dot is an underscore. Both spellings come from the
functions below.
"""

from __future__ import annotations

from typing import Optional

PRIOR, DECODER = "prior", "decoder"
UPSAMPLER = "upsampler"
MOVQ = "movq"  # latent diffusion models (Kandinsky): latents -> pixels, one network call


def upsampler_key(index: int) -> str:
    """The key of upsampler stage `index`: "upsampler.0", ..."""
    return f"{UPSAMPLER}.{index}"


def file_name(key: str) -> str:
    """The on-disk spelling of a stage key: "upsampler.0" -> "upsampler_0"."""
    return key.replace(".", "_")


def upsampler_index(name: str) -> Optional[int]:
    """The index of an upsampler stage, in either spelling ("upsampler.1", "upsampler_1"); None
    for any other stage."""
    head, sep, tail = name.replace("_", ".").partition(".")
    return int(tail) if head == UPSAMPLER and sep and tail.isdecimal() else None
