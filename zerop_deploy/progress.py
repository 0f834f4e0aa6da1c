"""Progress bars on stderr for every step that can take more than a few seconds.

Shown only when stderr is a terminal and progress is wanted (``--quiet`` turns them off), so
stdout stays free for ``--json`` and logs of batch jobs stay clean.
"""

from __future__ import annotations

import sys
from typing import Any


def bar(total: int, desc: str, *, enabled: bool, unit: str = "it") -> Any:
    """A tqdm bar on stderr, disabled off a terminal or when ``enabled`` is False."""
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        dynamic_ncols=True,
        disable=not enabled or not sys.stderr.isatty(),
    )


def to(progress_bar: Any, value: int) -> None:
    """Move ``progress_bar`` to ``value`` (callbacks report totals, tqdm counts increments)."""
    progress_bar.update(max(0, min(value, progress_bar.total) - progress_bar.n))
