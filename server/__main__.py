"""`python -m server [--port 8080 ...]`: serve the settings' model with uvicorn
(server/serving.py, which also says how SIGTERM drains).

Every setting is a flag and an environment variable (`--drain-grace-s` / `UNCLIP_DRAIN_GRACE_S`;
the flag wins), see `python -m server --help` and server/settings.py. The flags are parsed
before the model's stack (torch, diffusers, open_clip) is imported, so `--help` and a bad
flag answer at once.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Optional, Sequence

from .logs import configure
from .settings import Settings


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse the command line (default: sys.argv[1:]) and serve; returns the exit status.

    `--help` exits 0 and a bad flag or value exits 2, as with argparse (SystemExit); a model
    folder that holds no model, missing weights, a bad world.json, C2PA credentials that
    cannot sign and a bad file of moderation concepts return 2.
    """
    settings = Settings.from_cli(argv)
    uvicorn_logging = configure(settings.log_level, settings.log_format)
    from .serving import serve  # the stack, once the flags are known good

    return serve(settings, uvicorn_logging)


def exit_now(code: int) -> None:
    """Exit without the interpreter's teardown of torch and its thread pools (over a
    second on a 2-core host, after the server has already shut down cleanly)."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
