"""Notes other libraries log at import that are not meant for our users, dropped from the log.

transformers imports torchao with any model class where it is installed, and torchao's import
logs that its CUDA kernels do not load and that there is no Triton (neither runs on the CPU),
and torch a note on how torchao registers its enums. The package installs these filters on
import; this module imports no torch, so a bad command line still fails before torch loads.
"""

from __future__ import annotations

import logging

NOTES = {  # logger: text
    "torchao": "Failed to load",
    "torch.utils._pytree": "is an Enum subclass",
    "torchao.kernel.intmm": "Detected no triton",
}


class WithoutNote(logging.Filter):
    """Drops the records whose message contains `note`."""

    def __init__(self, note: str) -> None:
        super().__init__()
        self.note = note

    def filter(self, record: logging.LogRecord) -> bool:
        return self.note not in record.getMessage()


def drop_import_notes() -> None:
    """Install the filters of `NOTES`, once."""
    for name, note in NOTES.items():
        log = logging.getLogger(name)
        if not any(isinstance(f, WithoutNote) for f in log.filters):
            log.addFilter(WithoutNote(note))
