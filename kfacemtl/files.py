"""Atomic file writes: a crash never leaves a half-written file where a finished one belongs.

Example:
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "note.txt"
    >>> atomic_write_text(p, "done").read_text()
    'done'
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def atomic_write(path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a hidden temporary file beside ``path``, then rename it into place.

    The temporary name keeps ``path``'s suffix, so writers that choose a format by extension
    (``np.savez``, ``savefig``, ``model.save``) behave as for ``path``. The parent folder is created.

    Example:
        >>> import numpy as np
        >>> atomic_write("weights.npy", lambda tmp: np.save(tmp, np.arange(3))).name   # a crash leaves no half file
        'weights.npy'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_text(path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`).

    Example:
        >>> atomic_write_text("notes.txt", "hello\\n").read_text()
        'hello\\n'
    """
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def cache_root() -> Path:
    """The package's cache folder: ``$KFACEMTL_CACHE``, else ``~/.cache/kfacemtl`` (rendered synthetic splits and
    decoded images live under it).

    Example:
        >>> import os
        >>> cache_root() == Path(os.environ["KFACEMTL_CACHE"]) if "KFACEMTL_CACHE" in os.environ else True
        True
    """
    return Path(os.environ.get("KFACEMTL_CACHE", Path.home() / ".cache" / "kfacemtl"))
