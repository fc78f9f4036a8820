"""Typed input errors that the API maps to 400 responses naming the offending field."""

from __future__ import annotations


class InvalidInput(ValueError):
    """Bad input to an operation. `param` names the request field (OpenAI's error `param`)."""

    def __init__(self, param: str, message: str, code: str = "invalid_value"):
        super().__init__(message)
        self.param = param
        self.message = message
        self.code = code


class MissingExtra(RuntimeError):
    """A model folder's layout needs packages of an optional extra that is not installed."""

    def __init__(self, layout: str, extra: str, err: ImportError):
        super().__init__(f"{layout} needs the '{extra}' extra ({err.name or err}): make serve EXTRAS={extra} "
                         f"(or pip install '.[{extra}]' into the server's environment)")


class ContentRefused(InvalidInput):
    """A request refused by moderation (pipelines/moderation.py) at `stage`: "prompt" (its
    text embedding), "prior" (the prior's image embedding, before any decoder step) or
    "upload" (an uploaded image's embedding). The message never names the concept."""

    def __init__(self, stage: str, param: str, message: str):
        super().__init__(param, message, code="moderation_blocked")
        self.stage = stage
