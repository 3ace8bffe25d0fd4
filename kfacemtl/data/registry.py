"""Source formats by name: ``FORMAT:PATH?key=value&...`` specs, as configs and the command line write them.

A format registers its class with :func:`register_source`; :func:`make_source` builds a source from a spec,
checking its options against the class's constructor. Every format also takes ``sample=N``.

Example:
    >>> parse_spec("synthetic:lab?n=100&split=test")
    ('synthetic', 'lab', {'n': '100', 'split': 'test'})
    >>> "utkface" in SOURCE_FORMATS and "csv" in SOURCE_FORMATS
    True
"""
from __future__ import annotations

import inspect
import urllib.parse
from typing import Mapping

from kfacemtl.data.aligned import AlignedFaces
from kfacemtl.data.source import Source
from kfacemtl.data.wrappers import holdout_rows, sample_rows
from kfacemtl.errors import ConfigError, under_key

SOURCE_FORMATS: dict[str, type] = {}


def register_source(cls):
    """Class decorator: make a :class:`~kfacemtl.data.source.Source` subclass available as ``cls.format:PATH``.

    The constructor's first argument after ``self`` is the PATH; its other arguments are the spec's options.

    Example:
        >>> from kfacemtl.data.source import FileTableSource
        >>> @register_source
        ... class Pairs(FileTableSource):
        ...     format = "pairs-example"
        ...     def __init__(self, path, domain="studio"):
        ...         super().__init__(path, domain, [path], {"gender": [1]})
        >>> make_source("pairs-example:x.jpg?domain=lab").domain
        'lab'
    """
    if not cls.format or cls.format in SOURCE_FORMATS and SOURCE_FORMATS[cls.format] is not cls:
        raise ValueError(f"source format {cls.format!r} of {cls.__name__}: empty, or registered already")
    SOURCE_FORMATS[cls.format] = cls
    return cls


def parse_spec(spec: str) -> tuple[str, str, dict]:
    """Split ``FORMAT:PATH?key=value&...`` into ``(format, path, options)``.

    Example:
        >>> parse_spec("synthetic:lab?n=100&split=test")
        ('synthetic', 'lab', {'n': '100', 'split': 'test'})
    """
    if not isinstance(spec, str) or ":" not in spec:
        raise ConfigError("sources", f"expected FORMAT:PATH (formats: {sorted(SOURCE_FORMATS)}), got {spec!r}")
    fmt, rest = spec.split(":", 1)
    path, _, query = rest.partition("?")
    options = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
    return fmt, path, options


def _coerce(key_path, value, default):
    """Query-string values arrive as text: integers where the option's default is one."""
    if isinstance(value, str) and isinstance(default, int) and not isinstance(default, bool):
        try:
            return int(value)
        except ValueError:
            raise ConfigError(key_path, f"expected an integer, got {value!r}") from None
    return value


def _number(key_path, value):
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(key_path, f"expected a number, got {value!r}") from None


def validation_spec(spec: str | Mapping) -> str | Mapping | None:
    """The validation part of a training source spec that holds one out (``val_fraction=F``): the same spec with
    ``part=val``; None for a spec without ``val_fraction``.

    Example:
        >>> validation_spec("fer2013:data/fer2013?usage=Training&val_fraction=0.1")
        'fer2013:data/fer2013?usage=Training&val_fraction=0.1&part=val'
        >>> validation_spec("synthetic:lab?n=8") is None
        True
    """
    if isinstance(spec, Mapping):
        _, _, query = parse_spec(spec.get("spec", ""))
        if "val_fraction" not in {**query, **spec}:
            return None
        return {**spec, "part": "val"}
    fmt, path, query = parse_spec(spec)
    if "val_fraction" not in query:
        return None
    query["part"] = "val"
    return f"{fmt}:{path}?{urllib.parse.urlencode(query, safe='/:,')}"


def make_source(spec: str | Mapping, key_path: str = "sources", **options) -> Source:
    """Build a source from ``FORMAT:PATH`` (or ``{"spec": ..., **options}``).

    Options not accepted by the format, and an accepted option's bad value, raise a :class:`ConfigError` naming
    the key (``key_path`` and the option: ``sources.split``). Every format also takes:

    - ``sample=N``: a random N of its rows (the same N for the same source, seeded; in their original order), e.g.
      a slice of a large dataset for a quick run;
    - ``val_fraction=F`` with ``part=train`` (default) or ``part=val``: a validation set split off by person
      (:func:`~kfacemtl.data.wrappers.holdout_rows`), e.g. ``utkface:UTKFace?split=train&val_fraction=0.1`` to
      train and ``...&part=val`` to choose settings on;
    - ``align=DETECTOR`` (``mtcnn``; ``whole`` for crops) and ``align_size=N``: raw photos cut into faces as serving
      cuts them (:class:`~kfacemtl.data.aligned.AlignedFaces`), e.g. ``folder:photos?align=mtcnn``.

    Example:
        >>> make_source("synthetic:webcam", n=4).domain
        'webcam'
        >>> len(make_source("synthetic:lab?n=10&sample=3"))
        3
        >>> make_source("synthetic:lab?split=val", key_path="eval_sources[1]")
        Traceback (most recent call last):
        ...
        kfacemtl.errors.ConfigError: config key 'eval_sources[1].split': expected train or test, got 'val'
    """
    if isinstance(spec, Mapping):
        options = {**{k: v for k, v in spec.items() if k != "spec"}, **options}
        if "spec" not in spec:
            raise ConfigError(f"{key_path}.spec", "missing: each source needs spec: FORMAT:PATH")
        spec = spec["spec"]
    fmt, path, query = parse_spec(spec)
    if fmt not in SOURCE_FORMATS:
        raise ConfigError(key_path, f"unknown source format {fmt!r} in {spec!r}; formats are {sorted(SOURCE_FORMATS)}")
    cls = SOURCE_FORMATS[fmt]
    params = inspect.signature(cls.__init__).parameters
    allowed = list(params)[2:]  # after self and the PATH argument
    merged = {**query, **options}
    sample = merged.pop("sample", None)
    val_fraction, part = merged.pop("val_fraction", None), merged.pop("part", None)
    align, align_size = merged.pop("align", None), merged.pop("align_size", None)
    if align_size is not None and align is None:
        raise ConfigError(f"{key_path}.align_size", "needs align (the face detector: mtcnn, or whole for crops)")
    if part is not None and val_fraction is None:
        raise ConfigError(f"{key_path}.part", "needs val_fraction (the share of the source held out for validation)")
    for key in merged:
        if key not in allowed:
            raise ConfigError(f"{key_path}.{key}", f"not an option of {fmt} sources; options are {allowed}")
    kwargs = {k: _coerce(f"{key_path}.{k}", v, params[k].default) for k, v in merged.items()}
    if isinstance(kwargs.get("tasks"), str):
        kwargs["tasks"] = [t for t in kwargs["tasks"].split(",") if t]
    with under_key(key_path):  # the adapter's plain error about one of its options, named as that option's key
        source = cls(path, **kwargs)
    if val_fraction is not None:
        with under_key(key_path, test_fraction="val_fraction"):
            source = holdout_rows(source, _number(f"{key_path}.val_fraction", val_fraction), part or "train")
    with under_key(key_path):
        source = source if sample is None else sample_rows(source, _coerce(f"{key_path}.sample", sample, 0))
    if align is not None:
        with under_key(key_path, detector="align", size="align_size"):
            source = AlignedFaces(source, align, _coerce(f"{key_path}.align_size", align_size or 112, 0))
    return source
