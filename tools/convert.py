"""Convert public unCLIP weights into our model directory layout.

    python -m tools.convert karlo --prior P --decoder D --sr S --clip C --stats ST \\
        --out weights/karlo [--dtype fp16] [--allow-pickle]
    python -m tools.convert prune-tokens [--model weights/default]

Each source layout is a subcommand; every subcommand writes a model directory with
`pipelines.checkpoints.save_model_dir` (stack.json + safetensors). Nothing is downloaded.
`prune-tokens` rewrites a shapes-world model's CLIP file in place with its token embedding
pruned to the tokens of the shapes world's captions (`shapes_token_ids`).
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch
from safetensors.torch import save_file

from pipelines.checkpoints import (
    CONFIG_FILE,
    MissingWeightsError,
    UnsafeCheckpointError,
    build_on_meta,
    random_stack,
    read_weights,
    require_file,
    save_model_dir,
)
from pipelines.clip import prune_token_embedding
from pipelines.config import StackConfig
from pipelines.karlo import CheckpointMismatchError, import_karlo
from pipelines.stack import UnCLIPStack
from tools.shapes import all_captions

log = logging.getLogger("tools.convert")

DTYPES: dict[str, Optional[torch.dtype]] = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
PAD_TOKEN_ID = 0  # open_clip's tokenizer pads with 0; padded positions still pass through the text tower


def add_output_args(parser: argparse.ArgumentParser, default_out: str) -> None:
    """Options every subcommand shares: where to write and in which dtype."""
    parser.add_argument("--out", type=Path, default=Path(default_out),
                        help=f"model directory to write (default {default_out})")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32",
                        help="storage dtype of the weights (default fp32)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="allow full unpickling of files that weights_only loading refuses "
                             "(only for files you trust)")


def convert_karlo(args: argparse.Namespace) -> Path:
    """Karlo v1 alpha's original files -> our model directory."""
    cfg = StackConfig.load(require_file(args.config, "stack config")) if args.config else None
    stack = import_karlo(args.prior, args.decoder, args.sr, args.clip, args.stats, args.allow_pickle, cfg)
    return write(stack, args.out, args.dtype)


def random_weights(args: argparse.Namespace) -> Path:
    """A seeded random-weight stack of a preset architecture (placeholders, tests, benchmarks)."""
    presets = {"tiny": StackConfig.tiny, "karlo": StackConfig.karlo}
    cfg = StackConfig.load(require_file(args.config, "stack config")) if args.config else presets[args.preset]()
    return write(random_stack(cfg, args.seed), args.out, args.dtype)


def write(stack: UnCLIPStack, out: Path, dtype: str) -> Path:
    """Save a stack as a model directory in the chosen storage dtype."""
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} exists and is not a directory")
    save_model_dir(stack, out, DTYPES[dtype])
    log.info("wrote %s (%s)", out, dtype)
    return out


@functools.lru_cache(maxsize=1)
def shapes_token_ids() -> tuple[int, ...]:
    """Every token id a shapes-world CLIP ever sees, ascending: the BPE tokens of every
    caption the caption generator can write (`tools.shapes.all_captions`, every word of
    its vocabularies), start and end of text, and the padding id. The empty caption (the
    training's null caption) is start, end and padding."""
    from open_clip.tokenizer import SimpleTokenizer

    tokenizer = SimpleTokenizer()
    ids = {PAD_TOKEN_ID, tokenizer.sot_token_id, tokenizer.eot_token_id}
    for caption in all_captions():
        ids.update(tokenizer.encode(caption))
    return tuple(sorted(ids))


def prune_tokens(args: argparse.Namespace) -> Path:
    """Rewrite a model directory's CLIP file with its token embedding pruned to
    `shapes_token_ids` (a full or already pruned file; the result is the same)."""
    cfg = StackConfig.load(require_file(args.model / CONFIG_FILE, "model config"))
    file = require_file(args.model / cfg.clip.weights, "CLIP weights")
    module = build_on_meta(cfg).get_submodule("clip.model")
    before = file.stat().st_size
    sd = prune_token_embedding(read_weights(file, module), shapes_token_ids())
    tmp = file.with_name(file.name + ".tmp")
    save_file(sd, str(tmp))
    os.chmod(tmp, 0o644)
    tmp.replace(file)
    log.info("%s: %d bytes -> %d (%d token rows kept of %d)", file, before, file.stat().st_size,
             len(shapes_token_ids()), module.token_embedding.weight.shape[0])
    return file


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tools.convert", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="source", required=True, metavar="SOURCE")
    karlo = sub.add_parser("karlo", help="Karlo v1 alpha checkpoints (kakaobrain) + open_clip ViT-L-14 weights")
    for flag, what in (("--prior", "prior .ckpt"), ("--decoder", "decoder .ckpt"), ("--sr", "64->256 SR .ckpt"),
                       ("--clip", "open_clip ViT-L-14 state dict (.bin/.pt/.safetensors)"),
                       ("--stats", "ViT-L-14_stats.th")):
        karlo.add_argument(flag, type=Path, required=True, help=what)
    karlo.add_argument("--config", type=Path, default=None,
                       help="StackConfig JSON of the architecture (default: Karlo v1 alpha's, StackConfig.karlo())")
    add_output_args(karlo, "weights/karlo")
    karlo.set_defaults(func=convert_karlo)
    rand = sub.add_parser("random", help="seeded random weights of a preset architecture or a StackConfig JSON")
    rand.add_argument("--preset", choices=("tiny", "karlo"), default="tiny")
    rand.add_argument("--config", type=Path, default=None, help="StackConfig JSON (overrides --preset)")
    rand.add_argument("--seed", type=int, default=0)
    add_output_args(rand, "weights/random")
    rand.set_defaults(func=random_weights)
    prune = sub.add_parser("prune-tokens", help="store a shapes-world model's CLIP token embedding as the rows of "
                                                 "the shapes world's tokens plus one fallback row (in place)")
    prune.add_argument("--model", type=Path, default=Path("weights/default"),
                       help="model directory whose CLIP file to rewrite (default weights/default)")
    prune.set_defaults(func=prune_tokens)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the CLI; returns the exit status (2 with a one-line message on bad input files)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        args.func(args)
    except (MissingWeightsError, UnsafeCheckpointError, CheckpointMismatchError, NotADirectoryError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
