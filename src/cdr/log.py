"""How cdr reports: library modules log through ``logging.getLogger(__name__)`` (children of the "cdr" logger)
instead of printing, so a trainer embedding the reward silences or redirects them with the standard
``logging`` tools (``logging.getLogger("cdr").setLevel(logging.ERROR)``, a handler of its own, ...).

Without any logging set up, Python prints warnings and errors as bare lines on stderr (its last-resort
handler): a notice or a warning reaches a script's user as it always did. The CLI calls ``setup_logging``,
which prints info and above the same way, as plain lines, the text exactly as logged.
"""

from __future__ import annotations

import logging
import sys

ROOT = "cdr"


class CurrentStderrHandler(logging.StreamHandler):
    """A ``StreamHandler`` on whatever ``sys.stderr`` is when a record comes, not the one it was created with:
    output redirected later (``contextlib.redirect_stderr``, a test's capture) gets the lines."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler's __init__ and setStream assign it: always sys.stderr
        pass


def setup_logging(level: int = logging.INFO) -> logging.Logger:
    """Print the "cdr" logger's records at ``level`` and above on stderr as bare lines; once per process
    (calling it again changes only the level)."""
    logger = logging.getLogger(ROOT)
    if not any(isinstance(h, CurrentStderrHandler) for h in logger.handlers):
        handler = CurrentStderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(level)
    return logger
