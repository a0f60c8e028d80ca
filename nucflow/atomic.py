"""Write-then-rename: outputs appear complete or not at all.

Temporary files are named ``.<stem>.<8 hex>.partial<suffix>`` (hidden, beside their target)
and hold an exclusive ``flock`` while being written, so :func:`remove_partials` can tell a
file left by a killed writer (no lock) from one another process is writing now (locked).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nucflow.storage import publish, remove_remote_partials

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no lock, and partials are never removed
    fcntl = None  # type: ignore[assignment]

__all__ = ["atomic_path", "is_partial", "remove_partials", "write_json", "write_text"]

log = logging.getLogger(__name__)

#: The one rule for temporary names (``atomic_path`` makes them, ``is_partial`` knows them).
_PARTIAL = re.compile(r"^\..+\.[0-9a-f]{8}\.partial(\.[^.]+)?$")


def is_partial(path: str | Path) -> bool:
    """Whether ``path`` is named like a temporary file of :func:`atomic_path` (never a result)."""
    return _PARTIAL.match(Path(path).name) is not None


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    On an exception the temporary file is removed and ``path`` is left as it was. The
    temporary name keeps the suffix, so writers that infer the format from it still work.
    The file exists (empty, locked) when the block starts; writers open and overwrite it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.partial{path.suffix}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield tmp
        os.replace(tmp, path)
        publish(path)  # a staged output of a run writing to a bucket: uploaded whole (no-op otherwise)
    finally:
        if tmp.exists():
            tmp.unlink()
        os.close(fd)


def remove_partials(folder: str | Path) -> list[Path]:
    """Remove the temporary files a killed or failed writer left in ``folder`` (not below it).

    A temporary file still locked by its writer (another run writing the same slide now) is
    left alone. Returns the files removed.
    """
    folder = Path(folder)
    remove_remote_partials(folder)  # temporary keys of a killed upload, for outputs in a bucket
    if fcntl is None or not folder.is_dir():
        return []
    removed = []
    for path in folder.iterdir():
        if not is_partial(path) or not path.is_file():
            continue
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue  # gone meanwhile
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            path.unlink()
            removed.append(path)
        except OSError:  # locked (being written) or not lockable here: leave it
            log.debug("left %s (being written, or locks unsupported)", path)
        finally:
            os.close(fd)
    if removed:
        log.info("removed %d partial file(s) left by an interrupted run in %s", len(removed), folder)
    return removed


def write_text(path: str | Path, text: str) -> Path:
    """Atomically write ``text`` to ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | Path, data: Any) -> Path:
    """Atomically write ``data`` as indented JSON."""
    return write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
