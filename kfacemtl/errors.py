"""Exceptions raised by kfacemtl.

Every error names the thing a user has to fix: the config key path, the file, or the
source and row of a bad label.

Example:
    >>> from kfacemtl.errors import ConfigError
    >>> str(ConfigError("model.widths", "expected a list of integers, got 'abc'"))
    "config key 'model.widths': expected a list of integers, got 'abc'"
"""
import contextlib


class KfacemtlError(Exception):
    """Base class of every error kfacemtl raises on purpose.

    Example:
        >>> try:
        ...     raise LabelError("lab-train row 3: gender 2 is not one of 0..1")
        ... except KfacemtlError as e:      # catches every error kfacemtl raises on purpose
        ...     print(type(e).__name__, e)
        LabelError lab-train row 3: gender 2 is not one of 0..1
    """


class ConfigError(KfacemtlError, ValueError):
    """A config key is unknown, missing or holds a value of the wrong kind.

    Example:
        >>> e = ConfigError("training.batch_size", "expected a positive integer, got 0")
        >>> e.key_path, str(e)
        ('training.batch_size', "config key 'training.batch_size': expected a positive integer, got 0")
    """

    def __init__(self, key_path, message):
        self.key_path = key_path
        super().__init__(f"config key '{key_path}': {message}")


def check_choice(key_path: str, value, choices):
    """``value`` if it is one of ``choices``, else a :class:`ConfigError` naming the key and the choices.

    Example:
        >>> check_choice("training.cache", "auto", ("auto", "none"))
        'auto'
        >>> check_choice("training.cache", "ram", ("auto", "none"))
        Traceback (most recent call last):
        ...
        kfacemtl.errors.ConfigError: config key 'training.cache': expected one of ('auto', 'none'), got 'ram'
    """
    if value not in choices:
        raise ConfigError(key_path, f"expected one of {choices}, got {value!r}")
    return value


@contextlib.contextmanager
def under_key(prefix: str):
    """Name the config key of a plain error: inside, a ``ValueError`` or ``TypeError`` whose message reads
    ``"<argument>: <what is wrong>"`` (how the modules word theirs) becomes a :class:`ConfigError` of
    ``<prefix>.<argument>``; another message becomes one of ``prefix``. A :class:`ConfigError` passes as it is.

    Example:
        >>> try:
        ...     with under_key("model"):
        ...         raise ValueError("pooling: expected one of ('flatten', 'avg'), got 'max'")
        ... except ConfigError as e:
        ...     print(e)
        config key 'model.pooling': expected one of ('flatten', 'avg'), got 'max'
    """
    try:
        yield
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        name, sep, message = str(e).partition(": ")
        if sep and name.replace("_", "").replace(".", "").isalnum():
            raise ConfigError(f"{prefix}.{name}", message) from None
        raise ConfigError(prefix, str(e)) from None


class SourceError(KfacemtlError, ValueError):
    """A data source cannot be read: a missing file, a bad column, an unreadable image.

    Example:
        >>> from kfacemtl.data import make_source
        >>> try:
        ...     make_source("folder:no/such/folder")
        ... except SourceError as e:
        ...     print("SourceError:", str(e)[:40])
        SourceError: ...
    """


class LabelError(SourceError):
    """A label is out of range, not a number, or NaN where a value was promised.

    Example:
        >>> isinstance(LabelError("faces.csv row 7: age -3 is outside [0, 120]"), ValueError)
        True
    """


class TrainingDiverged(KfacemtlError, RuntimeError):
    """The training loss became NaN or infinite and the run stopped (``training.on_nan``).

    Example:
        >>> error = TrainingDiverged("the training loss became NaN or infinite at epoch 3, batch 41")
        >>> isinstance(error, KfacemtlError), isinstance(error, RuntimeError)   # train_run raises it (on_nan: stop)
        (True, True)
    """
