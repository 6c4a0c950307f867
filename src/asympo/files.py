"""Atomic file writes shared by checkpoints, run logs, studies, reports and the SFT cache.

A reader (a browser refreshing report.html, `asympo report` on a running study, a resume after a crash)
sees the old file or the new one, never a torn one: write a temporary file beside the target, fsync it,
rename it over the target, fsync the directory so the rename itself survives a power cut. Files get the
ordinary mode the process's umask allows (0644 under the usual umask), not mkstemp's private 0600.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def fsync_dir(path: str | Path) -> None:
    """Flush a directory's entries (a rename or a new file in it) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: str | Path) -> None:
    """fsync every file under `path`, then `path` itself (a directory built aside before its rename)."""
    path = Path(path)
    for p in sorted(path.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    fsync_dir(path)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Replace `path` with `data` atomically (temp file, fsync, rename, fsync of the directory)."""
    path = Path(path)
    # Unique per call, not only per process: two threads may write the same target at once.
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "xb") as f:  # "x": a plain open, so the umask decides the mode
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    """`atomic_write_bytes` of `text` encoded as UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))
