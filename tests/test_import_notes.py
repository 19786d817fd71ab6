"""What importing the package does: torchao's import-time notes leave the log (nothing else those
loggers say), and oneDNN gets a kernel cache large enough for many window lengths."""

from __future__ import annotations

import logging

import qa_distill  # noqa: F401 - installs the filters
from qa_distill.runtime.import_notes import NOTES, WithoutNote, drop_import_notes


class Kept(logging.Handler):
    """The messages a logger passes on (on the logger itself: torch's logging may stop its
    loggers propagating to the root, where caplog listens)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_only_the_import_notes_are_dropped():
    drop_import_notes()  # a second time: still one filter per logger
    for name, note in NOTES.items():
        log, kept = logging.getLogger(name), Kept()
        assert sum(isinstance(f, WithoutNote) for f in log.filters) == 1
        level = log.level
        log.addHandler(kept)
        log.setLevel(logging.WARNING)
        try:
            log.warning("%s /x/_C_mxfp8.so: Could not load this library", note)
            log.warning("something else went wrong")
        finally:
            log.removeHandler(kept)
            log.setLevel(level)
        assert kept.messages == ["something else went wrong"], name


def test_the_package_enlarges_onednns_kernel_cache_unless_the_user_set_it():
    import os
    import subprocess
    import sys

    show = "import os, qa_distill; print(os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY'])"
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
    ours = subprocess.run([sys.executable, "-c", show], env=env, capture_output=True, text=True, check=True)
    theirs = subprocess.run([sys.executable, "-c", show], env={**env, "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "64"},
                            capture_output=True, text=True, check=True)
    assert (ours.stdout.strip(), theirs.stdout.strip()) == ("16384", "64")
