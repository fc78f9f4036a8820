"""The server's logs: lines for people (`log_format=text`, the default), or one JSON object
a line for log collectors (`log_format=json`: Loki, Elasticsearch, Cloud Logging), with
`time` (ISO 8601, UTC), `level`, `logger`, `message`, `request_id` (the x-request-id of
the request that logged it; null for what no request logs, such as the engine thread's
lines) and `exc_info` (a traceback). uvicorn's own lines take the same form, its access
lines with `client`, `method`, `path` and `status` as fields too, and Python warnings are
logged rather than printed. The request id travels
in a context variable that the RequestContext middleware (server/app.py) sets, so the
tasks a request starts carry it too. JSON is written by python-json-logger."""

from __future__ import annotations

import logging
import logging.config
from contextvars import ContextVar
from typing import Any, Literal, Optional

from pythonjsonlogger.core import RESERVED_ATTRS

LogFormat = Literal["text", "json"]
CURRENT_REQUEST: ContextVar[Optional[str]] = ContextVar("request_id", default=None)
TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class WithRequestId(logging.Filter):
    """Gives each record the request id of the context that logged it."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = CURRENT_REQUEST.get()
        return True


class AccessFields(logging.Filter):
    """Gives uvicorn's access lines their parts as fields: client, method, path, status."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and len(record.args) == 5:
            record.client, record.method, record.path, _, record.status = record.args
        return True


def json_config(level: str) -> dict[str, Any]:
    """The logging.config dict of JSON lines on stderr for the root logger and uvicorn's."""
    handler = {"class": "logging.StreamHandler", "stream": "ext://sys.stderr", "formatter": "json",
               "filters": ["request_id"]}
    alone = {"level": level.upper(), "handlers": ["stderr"], "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": WithRequestId}, "access": {"()": AccessFields}},
        "formatters": {"json": {"()": "pythonjsonlogger.json.JsonFormatter",
                                "fmt": "%(levelname)s %(name)s %(message)s %(request_id)s",
                                "rename_fields": {"levelname": "level", "name": "logger"}, "timestamp": "time",
                                "reserved_attrs": [*RESERVED_ATTRS, "color_message"]}},  # uvicorn's ANSI copy
        "handlers": {"stderr": handler},
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        "loggers": {"uvicorn": alone, "uvicorn.access": {**alone, "filters": ["access"]}},
    }


def configure(level: str, fmt: LogFormat) -> Optional[dict[str, Any]]:
    """Set up the process's logging; the config uvicorn is to apply in turn (None: its own,
    for text)."""
    if fmt == "text":
        logging.basicConfig(level=level.upper(), format=TEXT)
        return None
    config = json_config(level)
    logging.config.dictConfig(config)
    logging.captureWarnings(True)
    return config
