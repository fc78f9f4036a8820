"""Check images for the server's invisible watermark (server/trust/watermark.py):

    python -m tools.watermark [--key KEY] FILE...

prints, per file, `marked` or `not marked` with the score (the correlation peak in standard
deviations; marked from 8) and, where the mark was found only after rescaling, the long side
it was found at. The key is --key, else UNCLIP_WATERMARK_KEY, else the server's default.
Exit code 0: every file is marked; 1: some file is not; 2: a file could not be read.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from PIL import Image, UnidentifiedImageError

from server.settings import Settings
from server.trust.watermark import Detection, Watermark


def verdict(found: Detection) -> str:
    """One line of what was found."""
    where = f" at {found.side} px" if found.side is not None else ""
    return f"marked (score {found.score:.1f}{where})" if found.marked else f"not marked (best score {found.score:.1f})"


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("files", nargs="+", type=Path)
    default = os.environ.get("UNCLIP_WATERMARK_KEY") or Settings.model_fields["watermark_key"].default
    p.add_argument("--key", default=default,
                   help="the key the images were marked with (default: UNCLIP_WATERMARK_KEY, else the server's)")
    args = p.parse_args(argv)
    mark, unmarked = Watermark(args.key), 0
    for path in args.files:
        try:
            with Image.open(path) as image:
                found = mark.detect(image)
        except (OSError, UnidentifiedImageError) as err:
            print(f"{path}: cannot read it: {err}", file=sys.stderr)
            return 2
        unmarked += not found.marked
        print(f"{path}: {verdict(found)}")
    return 1 if unmarked else 0


if __name__ == "__main__":
    raise SystemExit(main())
