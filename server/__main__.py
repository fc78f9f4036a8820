"""`python -m server`: serve the settings' model with uvicorn.

SIGTERM (or Ctrl+C): /ready turns 503 and new work gets 503 at once, while the engine
finishes its jobs for up to `UNCLIP_DRAIN_GRACE_S` seconds; then the server stops
(responses still being written get a few more seconds) and the process exits 0. A second
signal stops at once.
"""

from __future__ import annotations

import logging
import sys
import threading
from types import FrameType
from typing import Optional

import uvicorn

from pipelines.checkpoints import MissingWeightsError

from .app import Runtime, create_app
from .settings import Settings

log = logging.getLogger("server")


class DrainingServer(uvicorn.Server):
    """uvicorn.Server whose first exit signal drains the engine before shutting down."""

    def __init__(self, config: uvicorn.Config, runtime: Runtime, grace_s: float):
        super().__init__(config)
        self.runtime, self.grace_s = runtime, grace_s
        self.draining = False

    def handle_exit(self, sig: int, frame: Optional[FrameType]) -> None:
        if self.draining:
            log.warning("second signal: stopping now")
            self.should_exit = self.force_exit = True
            return
        self.draining = True
        log.info("signal %d: draining (up to %.0f s)", sig, self.grace_s)
        self.runtime.begin_drain()
        threading.Thread(target=self._exit_when_idle, name="drain", daemon=True).start()

    def _exit_when_idle(self) -> None:
        if not self.runtime.wait_idle(self.grace_s):
            log.warning("grace period over with jobs still running: stopping anyway")
        self.should_exit = True


def main() -> int:
    settings = Settings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        app = create_app(settings)
    except MissingWeightsError as err:
        log.error("%s", err)
        return 2
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                            timeout_graceful_shutdown=10, lifespan="on")
    server = DrainingServer(config, app.state.runtime, settings.drain_grace_s)
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
