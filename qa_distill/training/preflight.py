"""Checks of the machine before compute: the output directory and the MLflow tracking store.

Each failure is one ConfigError line, raised before any data is tokenised or any step trained,
so a read-only or full disk or a dead tracking server costs seconds, not a training.
"""

from __future__ import annotations

import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from qa_distill.config import TrackingConfig, sqlite_file, tracking_uri
from qa_distill.errors import ConfigError

# a checkpoint holds the weights and Adam's two moments; a new one is written before the old is deleted
CHECKPOINT_COPIES = 2 * 3
GB = 1024**3


def _existing_ancestor(path: Path) -> Path:
    """The deepest part of `path` that exists (the directory a new output dir is created in)."""
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def _reclaimable(target: Path) -> int:
    """Bytes of the checkpoints already in the output directory: the one a resume continues from
    and any older or unfinished ones; the run removes each of them before it needs their room."""
    return sum(f.stat().st_size for d in target.glob("checkpoint-*") for f in d.rglob("*") if f.is_file())


def check_output_dir(output_dir: str, model_bytes: int) -> None:
    """The output directory can be created and written, with room for the model and its checkpoints
    (counting the room of the checkpoints already there, which a resume reuses or replaces)."""
    target = Path(output_dir)
    base = _existing_ancestor(target)
    if not base.is_dir():
        raise ConfigError(f"output directory {output_dir}: {base} is a file, not a directory")
    if not os.access(base, os.W_OK | os.X_OK):
        raise ConfigError(f"output directory {output_dir}: {base} is not writable (read-only or not ours)")
    needed = model_bytes * (1 + CHECKPOINT_COPIES)
    free = shutil.disk_usage(base).free
    there = _reclaimable(target) if target.is_dir() else 0
    if free + there < needed:
        theirs = f" and {there / GB:.2f} GB of checkpoints this run replaces" if there else ""
        raise ConfigError(
            f"output directory {output_dir}: {free / GB:.2f} GB free{theirs}; the model and its checkpoints need "
            f"about {needed / GB:.2f} GB, {(needed - free - there) / GB:.2f} GB missing; free some space or "
            "choose another --output-dir"
        )


def connect(config: TrackingConfig, *, timeout: float = 10.0) -> str:
    """Point MLflow at the configured store once it answers; returns its URI.

    Called before any `models:/` or `runs:/` source is resolved, so those resolve in the
    configured store (not in a stray `mlflow.db` in the working directory).
    """
    import mlflow

    uri = tracking_uri(config)
    if (database := sqlite_file(uri)) is not None:
        folder = database.absolute().parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise ConfigError(f"tracking URI {uri}: folder {folder} does not exist or is not writable")
    elif uri.startswith(("http://", "https://")):
        try:
            urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout).close()
        except urllib.error.HTTPError:
            pass  # the server answered: reachable (it may not serve /health)
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ConfigError(f"tracking URI {uri} is not reachable ({reason}); start the server or fix "
                              "MLFLOW_TRACKING_URI / tracking.tracking_uri") from None
    mlflow.set_tracking_uri(uri)
    return uri
