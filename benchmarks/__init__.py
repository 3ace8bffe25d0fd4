"""The benchmarks: one module per experiment, run from the repository's root as ``python -m benchmarks.NAME``.

Their write-ups, with the command, machine, date and seeds of every table, are in ``docs/benchmarks/``.

Example:
    >>> from benchmarks.common import parse_variants
    >>> parse_variants(['narrow={"widths": [16, 32]}'])
    {'narrow': {'widths': [16, 32]}}
"""
