"""The compiled-library cache's bookkeeping: build records, digest checks, a size cap.

A library is native code that this process loads and runs, so the cache holds only what this
project built: beside each `<key>.pt2` a `<key>.json` holds its key and SHA-256, written at build
time (`write_record`), and checked before every load (`damage`). Loading touches the record, so
its mtime is the library's last use; after each build the least recently used libraries go
until the cache fits its cap (`QA_DISTILL_CACHE_GB`, default `CACHE_GB`).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from qa_distill.data.squad import file_sha256
from qa_distill.errors import ConfigError
from qa_distill.runtime.hardware import cpu_name

CACHE_GB = 4.0  # default cap of the compiled cache (`QA_DISTILL_CACHE_GB`)
# seconds one library takes to build where this cache has no record of a build on this CPU (a
# shared 2-core Zen 3 EPYC took 71 s for the tests' 2-layer DistilBERT: the C++ compile dominates)
DEFAULT_BUILD_SECONDS = 90.0


def cache_cap_bytes() -> int:
    """The compiled cache's size cap: `QA_DISTILL_CACHE_GB` gigabytes (default `CACHE_GB`)."""
    text = os.environ.get("QA_DISTILL_CACHE_GB", "")
    try:
        gigabytes = float(text) if text else CACHE_GB
    except ValueError:
        gigabytes = -1.0
    if not gigabytes > 0:
        raise ConfigError(f"QA_DISTILL_CACHE_GB must be a number of gigabytes > 0, got {text!r}")
    return int(gigabytes * 1e9)


def record_path(path: Path) -> Path:
    """The build record beside a library: its key, SHA-256, build seconds and CPU."""
    return path.with_suffix(".json")


def damage(path: Path) -> str | None:
    """Why the cached library at `path` is not one this project built for its key, or None."""
    try:
        record = json.loads(record_path(path).read_text())
    except FileNotFoundError:
        return "no build record"
    except (OSError, ValueError) as error:
        return f"unreadable build record ({error})"
    if not isinstance(record, dict) or record.get("key") != path.stem:
        return "its build record is of another library"
    if record.get("sha256") != file_sha256(path):
        return "its SHA-256 differs from the one written when it was built"
    return None


def remove_library(path: Path) -> None:
    """A library and its build record gone from the cache."""
    for file in (path, record_path(path)):
        file.unlink(missing_ok=True)


def cached_libraries(root: Path) -> list[Path]:
    return sorted(root.glob("*.pt2")) if root.is_dir() else []


def _last_used(path: Path) -> float:
    """When a library was last built or loaded (its record's mtime, touched on every load)."""
    record = record_path(path)
    return (record if record.exists() else path).stat().st_mtime


def evict(cap: int, *, keep: Path) -> list[Path]:
    """Remove the least recently used libraries (never `keep`) until the cache holds at most
    `cap` bytes; returns the removed ones."""
    libraries = sorted(cached_libraries(keep.parent), key=_last_used)
    sizes = {p: p.stat().st_size + (record_path(p).stat().st_size if record_path(p).exists() else 0) for p in libraries}
    total, removed = sum(sizes.values()), []
    for path in libraries:
        if total <= cap:
            break
        if path != keep:
            remove_library(path)
            total -= sizes[path]
            removed.append(path)
    if removed:
        print(f"compiled cache over its {cap / 1e9:g} GB cap (QA_DISTILL_CACHE_GB): removed the "
              f"{len(removed)} least recently used libraries", file=sys.stderr, flush=True)
    return removed


def build_seconds(root: Path) -> float:
    """About how long one library takes to build here: the median of the builds on this CPU in
    the cache at `root`, else `DEFAULT_BUILD_SECONDS`."""
    cpu, seconds = cpu_name(), []
    for library in cached_libraries(root):
        try:
            record = json.loads(record_path(library).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("cpu") == cpu and isinstance(record.get("seconds"), int | float):
            seconds.append(float(record["seconds"]))
    return sorted(seconds)[len(seconds) // 2] if seconds else DEFAULT_BUILD_SECONDS


def write_record(path: Path, seconds: float) -> None:
    """The build record of the library at `path`: key, SHA-256, seconds it took, CPU."""
    record = {"key": path.stem, "sha256": file_sha256(path), "seconds": seconds, "cpu": cpu_name()}
    record_path(path).write_text(json.dumps(record))


def mark_used(path: Path) -> None:
    """Now is the library's last use (what eviction goes by)."""
    os.utime(record_path(path))
