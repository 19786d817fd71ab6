"""torchao's import-time notes are dropped from the log; everything else those loggers say is kept."""

from __future__ import annotations

import logging

import qa_distill  # noqa: F401 - installs the filters
from qa_distill.import_notes import NOTES, WithoutNote, drop_import_notes


def test_only_the_import_notes_are_dropped(caplog):
    drop_import_notes()  # a second time: still one filter per logger
    for name, note in NOTES.items():
        log = logging.getLogger(name)
        assert sum(isinstance(f, WithoutNote) for f in log.filters) == 1
        with caplog.at_level(logging.WARNING, logger=name):
            log.warning("%s /x/_C_mxfp8.so: Could not load this library", note)
            log.warning("something else went wrong")
    assert [r.getMessage() for r in caplog.records] == ["something else went wrong"] * len(NOTES)
