"""Library code reports through the "cdr" logger: the CLI prints it as plain lines, an embedding caller
silences or redirects it."""

from __future__ import annotations

import contextlib
import io
import logging

from cdr.cache import LogprobCache
from cdr.log import CurrentStderrHandler, setup_logging


def test_setup_logging_attaches_one_plain_stderr_handler():
    logger = setup_logging()
    setup_logging()
    assert sum(isinstance(h, CurrentStderrHandler) for h in logger.handlers) == 1
    assert logger.level == logging.INFO
    err = io.StringIO()
    with contextlib.redirect_stderr(err):  # the handler follows sys.stderr, as print(file=sys.stderr) did
        logging.getLogger("cdr.models").warning("cdr: a notice")
        logging.getLogger("cdr.models").debug("not shown")
    assert err.getvalue() == "cdr: a notice\n"


def test_a_library_warning_can_be_silenced_or_captured(tmp_path, caplog):
    bad = tmp_path / "not-a-db.sqlite"
    bad.write_bytes(b"this is not an SQLite database" * 100)
    with caplog.at_level(logging.WARNING, logger="cdr"):
        cache = LogprobCache(bad)
    assert cache.disabled and "cannot be used" in caplog.text
    assert caplog.records[-1].name == "cdr.cache"
    logger = logging.getLogger("cdr")
    level = logger.level
    err = io.StringIO()
    try:
        logger.setLevel(logging.ERROR)  # what a trainer embedding the reward does to quiet it
        with contextlib.redirect_stderr(err):
            LogprobCache(bad)
    finally:
        logger.setLevel(level)
    assert err.getvalue() == ""
