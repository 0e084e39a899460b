"""Errors a user can act on. The CLI prints these as one line and exits non-zero, without a traceback."""


class CdrError(Exception):
    """Base class for errors caused by input, configuration or the environment, not by a bug."""


class ModelNotAvailable(CdrError):
    """A model was named that cannot be found or loaded here; the message says how to get it."""


class RowError(CdrError):
    """A malformed input row. ``location`` is 'line 7' (JSONL) or 'row 7' (Parquet/CSV)."""

    def __init__(self, location: str, field: str | None, message: str, kind: str = "malformed row"):
        self.location = location
        self.field = field
        self.message = message
        self.kind = kind  # a short label, counted per kind in run summaries
        where = f"{location}, field '{field}'" if field else location
        super().__init__(f"{where}: {message}")
