"""Errors a user can act on. The CLI prints these as one line and exits non-zero, without a traceback."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cdr.conversation import ConversationError


class CdrError(Exception):
    """Base class for errors caused by input, configuration or the environment, not by a bug."""


class ModelNotAvailable(CdrError):
    """A model was named that cannot be found or loaded here; the message says how to get it."""


class ExitLayerError(CdrError):
    """A model that cannot be read at the exit layer asked for. A backend does not know which side of the pair
    it serves, so it words the problem alone (``detail``); ``for_side`` names the option the user set."""

    def __init__(self, value: int, detail: str, show_value: bool = True):
        self.value, self.detail, self.show_value = value, detail, show_value
        super().__init__(self._text("exit_layer"))

    def _text(self, name: str, flag: str = "") -> str:
        return f"{name}{f' {self.value}' if self.show_value else ''}{flag}: {self.detail}"

    def for_side(self, side: str) -> CdrError:
        return CdrError(self._text(f"{side}_exit_layer", f" (--{side}-exit-layer)"))


class RowError(CdrError):
    """A malformed input row. ``location`` is 'line 7' (JSONL) or 'row 7' (Parquet/CSV)."""

    def __init__(self, location: str, field: str | None, message: str, kind: str = "malformed row"):
        self.location = location
        self.field = field
        self.message = message
        self.kind = kind  # a short label, counted per kind in run summaries
        where = f"{location}, field '{field}'" if field else location
        super().__init__(f"{where}: {message}")

    @classmethod
    def from_conversation_error(cls, location: str, exc: ConversationError) -> RowError:
        """The row's report of a ``cdr.conversation.ConversationError`` (same field, message and kind)."""
        return cls(location, exc.field, exc.message, exc.kind)

    def as_dict(self) -> dict[str, str | None]:
        """The row report as a line of the errors file."""
        return {"location": self.location, "field": self.field, "kind": self.kind, "error": self.message}
