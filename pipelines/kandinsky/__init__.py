"""Kandinsky 2.2 (prior, latent decoder, MoVQ) on diffusers' and transformers' networks,
sampled by this project's stages (see pipelines/kandinsky/pipeline.py). Needs the `hf` extra."""
