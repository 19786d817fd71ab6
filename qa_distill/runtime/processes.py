"""Which process is behind a run or a temporary directory, and whether it still lives.

A process killed outright (SIGKILL, a lost machine) ends nothing: its MLflow run stays RUNNING
and its temporary directories stay on disk. Runs carry the tag `qa_distill.process`
(host:pid:start time, so a reused pid is not taken for the dead process) and temporary
directories end in `.tmp-<pid>`; a later process closes or removes what has no live process.
What a process builds for others to read (a cache entry) is built in such a directory and renamed
into place whole (`atomic_path`), so a reader never sees half of it.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow

log = logging.getLogger(__name__)

PROCESS_TAG = "qa_distill.process"


def _start_time(pid: int) -> str:
    """When the process started (clock ticks since boot), so a reused pid is not taken for it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def seconds_running() -> float | None:
    """How long this process has run (None where /proc does not say): its start's share of a budget."""
    try:
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - int(_start_time(os.getpid())) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return None


def process_tag() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{_start_time(os.getpid())}"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def is_alive(tag: str | None) -> bool:
    """Whether the process a run's tag names still runs; a process on another host counts as alive."""
    if not tag:
        return False  # a run from before the tag existed: nothing can still be writing it
    host, pid, started = tag.rsplit(":", 2)
    if host != socket.gethostname():
        return True
    return pid_alive(int(pid)) and (not started or _start_time(int(pid)) == started)


def remove_stale_temp_dirs(folder: Path) -> list[Path]:
    """Remove `<name>.tmp-<pid>` directories whose process is gone (a computation killed midway)."""
    stale = []
    for tmp in folder.glob("*.tmp-*"):
        pid = tmp.name.rsplit(".tmp-", 1)[1]
        if tmp.is_dir() and pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)
            stale.append(tmp)
    if stale:
        log.warning("removed %d temporary directories left by killed processes in %s", len(stale), folder)
    return stale


@contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """A path to build `final` at (a file or a directory: the caller makes it), moved to `final`
    whole when the block ends without error, removed otherwise.

    It lies in `<final>.tmp-<pid>` beside `final`, where a killed build leaves it for the next
    build to remove (`remove_stale_temp_dirs`). Of two processes building one directory at
    once the first to finish wins and the other's copy is dropped; a file is replaced.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_dirs(final.parent)
    tmp = final.parent / f"{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        built = tmp / final.name
        yield built
        try:
            os.replace(built, final)
        except OSError:
            if not final.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def close_dead_runs(filter_string: str, *, keep: str | None = None) -> tuple[list[str], list[str]]:
    """End KILLED the RUNNING runs matching `filter_string` whose process is gone.

    Returns (closed, alive) run ids; `keep` (a run about to be resumed) is neither.
    """
    runs = mlflow.search_runs(
        search_all_experiments=True, filter_string=f"{filter_string} and attributes.status = 'RUNNING'"
    )
    closed, alive = [], []
    for _, row in runs.iterrows():
        if row["run_id"] == keep:
            continue
        if is_alive(row.get(f"tags.{PROCESS_TAG}")):
            alive.append(row["run_id"])
        else:
            mlflow.MlflowClient().set_terminated(row["run_id"], "KILLED")
            closed.append(row["run_id"])
    if closed:
        log.warning("marked KILLED %d RUNNING runs whose process is gone: %s", len(closed), closed)
    return closed, alive


STOPS = (signal.SIGINT, signal.SIGTERM)  # what stops a run: Ctrl-C, and a kill or `mlflow run` passing one on


@contextmanager
def stops_to(handler: Callable[[int, object], None]) -> Iterator[None]:
    """SIGINT and SIGTERM go to `handler` inside the block, and back to what they were after it
    (only the main thread may handle signals; elsewhere nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, handler) for signum in STOPS}
    try:
        yield
    finally:
        for signum, before in previous.items():
            signal.signal(signum, before)
