"""Serving the app with uvicorn until a signal says to stop.

SIGTERM (or Ctrl+C): /ready turns 503 and new work gets 503 at once, while the engine
finishes its jobs for up to `--drain-grace-s` seconds. When the grace runs out with jobs
still held, or at a second signal, every one of them answers an OpenAI-shaped 503
(`code: "shutdown"`) at that moment and the engine stops after its current step; the
server then closes (answers still being written get `WRITE_GRACE_S`) and serve returns.
"""

from __future__ import annotations

import logging
import threading
from types import FrameType
from typing import Any, Optional

import uvicorn

from pipelines.checkpoints import MissingWeightsError
from pipelines.errors import MissingExtra
from pipelines.model_dir import ModelDirError
from pipelines.moderation import BadConcepts

from .app import create_app
from .engine.batch_caps import BadCaps
from .runtime import Runtime
from .settings import Settings
from .trust.credentials import BadCredentials
from .world import BadWorld

log = logging.getLogger("server")
WRITE_GRACE_S = 2  # after the engine stopped: time for the last answers to be written


class DrainingServer(uvicorn.Server):
    """uvicorn.Server whose first exit signal drains the engine before shutting down."""

    def __init__(self, config: uvicorn.Config, runtime: Runtime, grace_s: float):
        super().__init__(config)
        self.runtime, self.grace_s = runtime, grace_s
        self.draining = False

    def handle_exit(self, sig: int, frame: Optional[FrameType]) -> None:
        if self.draining:
            log.warning("second signal: stopping now")
            self._stop()
            return
        self.draining = True
        log.info("signal %d: draining (up to %.0f s)", sig, self.grace_s)
        self.runtime.begin_drain()
        threading.Thread(target=self._exit_when_idle, name="drain", daemon=True).start()

    def _exit_when_idle(self) -> None:
        if not self.runtime.wait_idle(self.grace_s):
            log.warning("grace period over with jobs still running: they get 503 shutdown")
        self._stop()

    def _stop(self) -> None:
        """Answer every held job with 503 now, stop the engine, close the server."""
        self.runtime.abort()
        self.should_exit = True


def serve(settings: Settings, log_config: Optional[dict[str, Any]] = None) -> int:
    """Build the app and serve it until stopped; the exit status: 0, or 2 when a model
    folder holds no model, weights are missing, world.json is bad, the C2PA credentials
    cannot sign or the file of moderation concepts is bad (each logged, saying why).
    `log_config`: the logging config uvicorn applies (server/logs.py; None: its own)."""
    try:
        app = create_app(settings)
    except (MissingWeightsError, ModelDirError, MissingExtra, BadCaps, BadWorld, BadCredentials,
            BadConcepts) as err:
        log.error("%s", err)
        return 2
    own = {"log_config": log_config} if log_config is not None else {}
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                            timeout_graceful_shutdown=WRITE_GRACE_S, lifespan="on", **own)
    DrainingServer(config, app.state.runtime, settings.drain_grace_s).run()
    return 0
