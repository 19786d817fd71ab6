"""Errors a user can act on: the CLI prints their message and exits non-zero, without a traceback."""


class QaDistillError(Exception):
    """Base class: bad input or configuration, found before compute is spent."""


class ConfigError(QaDistillError):
    """A recipe, override or argument that cannot work."""


class DataError(QaDistillError):
    """A dataset file or record that is not valid SQuAD v1.1."""


class ModelError(QaDistillError):
    """A model that cannot be loaded or used as asked (tokenizer, teacher compatibility, ...)."""


class Interrupted(BaseException):
    """SIGTERM or SIGINT stopped the process (a BaseException, like KeyboardInterrupt, so that no
    `except Exception` - Optuna's included - takes it for a failed step)."""

    def __init__(self, signum: int) -> None:
        import signal

        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")
