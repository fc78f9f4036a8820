"""The networks' dtypes by the names that settings and command lines give them, in a module
that imports no torch, so that parsing flags (`python -m server --help`) stays instant.
"auto" lets the loader choose (`default_dtype`, pipelines/checkpoints.py); `dtype_named`
there turns a name into the torch dtype."""

from __future__ import annotations

from typing import Literal, get_args

DtypeName = Literal["auto", "float32", "float16", "bfloat16"]
DTYPE_NAMES: tuple[str, ...] = get_args(DtypeName)
