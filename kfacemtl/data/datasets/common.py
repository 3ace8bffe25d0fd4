"""What the public dataset adapters share: expression names, the contempt option, file checks.

Example:
    >>> expression_id("Happiness"), expression_id("contempt"), expression_id("bored")
    (3, 7, None)
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from kfacemtl.errors import SourceError
from kfacemtl.tasks import EXPRESSION_CLASSES_WITH_CONTEMPT


# Expression names used by datasets, mapped onto the expression task's classes (FER2013 order, contempt 7).
EXPRESSION_ALIASES = {
    "angry": "angry", "anger": "angry", "disgust": "disgust", "disgusted": "disgust", "fear": "fear",
    "fearful": "fear", "happy": "happy", "happiness": "happy", "sad": "sad", "sadness": "sad",
    "surprise": "surprise", "surprised": "surprise", "neutral": "neutral", "contempt": "contempt",
}


def expression_id(name: str) -> int | None:
    """Class id (FER2013 order, contempt 7) of a dataset's expression name, or None.

    Example:
        >>> expression_id("Sadness"), expression_id("bored")
        (4, None)
    """
    canonical = EXPRESSION_ALIASES.get(name.strip().lower())
    return None if canonical is None else EXPRESSION_CLASSES_WITH_CONTEMPT.index(canonical)


def contempt_option(value) -> str:
    """``value`` if it is ``keep`` or ``drop`` (what an adapter does with contempt images), else a ``ValueError``
    naming the ``contempt`` option.

    Example:
        >>> contempt_option("drop")
        'drop'
        >>> contempt_option("maybe")
        Traceback (most recent call last):
        ...
        ValueError: contempt: expected keep (needs the expression task's contempt class) or drop, got 'maybe'
    """
    if value not in ("keep", "drop"):
        raise ValueError(f"contempt: expected keep (needs the expression task's contempt class) or drop, "
                         f"got {value!r}")
    return value


def first_existing(*candidates: Path) -> Path | None:
    """The first of ``candidates`` that exists, or None (datasets ship their files in more than one layout).

    Example:
        >>> first_existing(Path("no/such/file"), Path(".")), first_existing(Path("no/such/file"))
        (PosixPath('.'), None)
    """
    return next((c for c in candidates if c.exists()), None)


def missing_files(paths: Sequence[str], where: str, what: str = "image file"):
    """Raise a SourceError naming the first few listed files that do not exist.

    Example:
        >>> try:
        ...     missing_files(["no/such.jpg"], "rafdb: labels.txt")
        ... except SourceError as e:
        ...     print(e)
        rafdb: labels.txt: 1 image file(s) listed do not exist, e.g. ['no/such.jpg']
    """
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise SourceError(f"{where}: {len(missing)} {what}(s) listed do not exist, e.g. {missing[:3]}")


def flag(value) -> bool:
    """A boolean option that may arrive as text from a query string.

    Example:
        >>> flag("true"), flag("0"), flag(True)
        (True, False, True)
    """
    return value.strip().lower() in ("1", "true", "yes", "on") if isinstance(value, str) else bool(value)
