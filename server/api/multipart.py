"""Multipart parsing that names the offending field.

Starlette's parser decodes a text field that is not valid UTF-8 as Latin-1 (so a bad
prompt would be silently replaced), and its errors (a part too large, too many files) do
not say which field broke them. `NamingParser` is Starlette's parser with those three
places wrapped: every failure is a `FieldError` carrying the field's name, and text fields
must decode strictly.
"""

from __future__ import annotations

from typing import Optional

from starlette.formparsers import MultiPartException, MultiPartParser


class FieldError(Exception):
    """A form part that cannot be accepted; `field` is its name (None if it has none)."""

    def __init__(self, field: Optional[str], message: str, code: str = "invalid_form"):
        super().__init__(message)
        self.field, self.message, self.code = field, message, code


class NamingParser(MultiPartParser):
    """Starlette's multipart parser whose errors name their field."""

    def _field(self) -> Optional[str]:
        name = self._current_part.field_name
        return (name[:-2] if name.endswith("[]") else name) or None

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        try:
            super().on_part_data(data, start, end)
        except MultiPartException:
            field = self._field()
            raise FieldError(field, f"'{field}' is too long: a text field holds at most {self.max_part_size} bytes.",
                             "field_too_long") from None

    def on_headers_finished(self) -> None:
        try:
            super().on_headers_finished()
        except MultiPartException as err:
            raise FieldError(self._field(), err.message) from None

    def on_part_end(self) -> None:
        part = self._current_part
        if part.file is None:
            try:
                bytes(part.data).decode(self._charset)
            except (UnicodeDecodeError, LookupError):
                field = self._field()
                raise FieldError(field, f"'{field}' is not valid {self._charset} text.", "invalid_encoding") from None
        super().on_part_end()
