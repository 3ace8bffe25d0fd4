"""Plain-text tables, as the CLI, the reports and the benchmarks print them.

Example:
    >>> print(text_table(["task", "n"], [["age", 12]]))
    task  n
    ----  --
    age   12
"""
from __future__ import annotations

from typing import Sequence


def text_table(header: Sequence, rows: Sequence[Sequence]) -> str:
    """Left-aligned columns two spaces apart under a header and a dashed rule (cells shown with ``str``).

    Example:
        >>> print(text_table(["task", "n"], [["age", 12], ["gender", 3]]))
        task    n
        ------  --
        age     12
        gender  3
    """
    rows = [[str(c) for c in r] for r in rows]
    header = [str(c) for c in header]
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])
