"""Exceptions raised by kfacemtl.

Every error names the thing a user has to fix: the config key path, the file, or the
source and row of a bad label.

Example:
    >>> from kfacemtl.errors import ConfigError
    >>> str(ConfigError("model.widths", "expected a list of integers, got 'abc'"))
    "config key 'model.widths': expected a list of integers, got 'abc'"
"""
import contextlib
import re

# the argument a plain error names: "alpha: ...", "mixing.lab-train: ...", "transforms[2]: ..."
_ARGUMENT = re.compile(r"[A-Za-z_][\w.\-]*(\[\d+\])?([.][\w\-]+)*")


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


def expect_one_of(name: str, value, choices):
    """``value`` if it is one of ``choices``, else a plain ``ValueError`` that names the argument: how the modules
    check their own options (a config wraps the call in :func:`under_key` to name its key instead).

    Example:
        >>> expect_one_of("cache", "auto", ("auto", "none"))
        'auto'
        >>> expect_one_of("cache", "ram", ("auto", "none"))
        Traceback (most recent call last):
        ...
        ValueError: cache: expected one of ('auto', 'none'), got 'ram'
    """
    if value not in choices:
        raise ValueError(f"{name}: expected one of {tuple(choices)}, got {value!r}")
    return value


@contextlib.contextmanager
def under_key(prefix: str, **keys: str):
    """Name the config key of a plain error: inside, a ``ValueError`` or ``TypeError`` whose message reads
    ``"<argument>: <what is wrong>"`` (how the modules word theirs) becomes a :class:`ConfigError` of
    ``<prefix>.<argument>`` (or ``<prefix>.<keys[argument]>``, where the argument and the key have different
    names); another message becomes one of ``prefix``. kfacemtl's own errors (a
    :class:`ConfigError`, a :class:`SourceError` ...) pass as they are.

    The modules check their arguments with plain errors (``ValueError("alpha: expected >= 0, got -1")``), so a
    Python caller reads the argument's name; the config layer calls them inside ``under_key("training.
    weighting_options")`` and its user reads the key ``training.weighting_options.alpha``.

    Example:
        >>> try:
        ...     with under_key("model"):
        ...         raise ValueError("pooling: expected one of ('flatten', 'avg'), got 'max'")
        ... except ConfigError as e:
        ...     print(e)
        config key 'model.pooling': expected one of ('flatten', 'avg'), got 'max'
        >>> try:
        ...     with under_key("training", devices="strategy_devices"):
        ...         raise ValueError("devices: ['/gpu:7'] are not devices of this machine")
        ... except ConfigError as e:
        ...     print(e.key_path)
        training.strategy_devices
        >>> try:
        ...     with under_key("distillation"):
        ...         raise ValueError("transforms[2]: expected (flip, scale, dx, dy), got 3")
        ... except ConfigError as e:
        ...     print(e.key_path)
        distillation.transforms[2]
    """
    try:
        yield
    except KfacemtlError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(*_under(prefix, e, keys)) from None


@contextlib.contextmanager
def under_argument(prefix: str):
    """Like :func:`under_key`, for a function that passes some of its arguments on: the plain error about an
    argument of the callee stays a plain ``ValueError``, named as a part of the caller's argument ``prefix``
    (``alpha`` of a weighting becomes ``weighting_options.alpha``). kfacemtl's own errors pass as they are.

    Example:
        >>> try:
        ...     with under_key("training"), under_argument("weighting_options"):
        ...         raise ValueError("alpha: expected >= 0, got -1")
        ... except ConfigError as e:
        ...     print(e)
        config key 'training.weighting_options.alpha': expected >= 0, got -1
    """
    try:
        yield
    except KfacemtlError:
        raise
    except (ValueError, TypeError) as e:
        raise ValueError(": ".join(_under(prefix, e, {}))) from None


def _under(prefix: str, error: Exception, keys) -> tuple[str, str]:
    """``(key, message)`` of a plain error inside ``prefix``, its argument renamed by ``keys``."""
    name, sep, message = str(error).partition(": ")
    if sep and _ARGUMENT.fullmatch(name):
        argument, rest = re.match(r"([^.\[]*)(.*)", name).groups()
        name = keys.get(argument, argument) + rest
        return (f"{prefix}.{name}" if prefix else name), message
    return prefix, str(error)


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
