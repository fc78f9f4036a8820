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
