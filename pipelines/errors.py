"""Typed input errors that the API maps to 400 responses naming the offending field."""

from __future__ import annotations


class InvalidInput(ValueError):
    """Bad input to an operation. `param` names the request field (OpenAI's error `param`)."""

    def __init__(self, param: str, message: str, code: str = "invalid_value"):
        super().__init__(message)
        self.param = param
        self.message = message
        self.code = code
