"""Hold Ctrl-C and SIGTERM until a training step is complete.

An interrupt raised in the middle of a step (half way through the optimizer's parameter updates,
or after the update but before the step counter moves on) leaves weights and step count out of
step with each other: the checkpoint written on the way out would then resume into a different
model than an uninterrupted run gives. Inside :class:`StepBoundary`, the first SIGINT/SIGTERM is
only recorded; :meth:`StepBoundary.check`, called between steps, then runs the handler that was
installed before (which raises KeyboardInterrupt, or the CLI's Terminated) at a consistent point.
A second signal while one is pending runs that handler at once: a step that hangs can still be
stopped.

Only signals with a Python handler are held (the default SIGINT handler, the CLI's SIGTERM
handler); a default-action SIGTERM still ends the process at once, as SIGKILL would, and resuming
from the last periodic checkpoint covers it. Outside the main thread nothing is changed.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StepBoundary:
    """Context manager: defer SIGINT/SIGTERM to the next :meth:`check`."""

    def __init__(self) -> None:
        self._previous: dict[int, Any] = {}
        self._pending: tuple[int, FrameType | None] | None = None

    def __enter__(self) -> StepBoundary:
        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in _SIGNALS:
            handler = signal.getsignal(sig)
            if callable(handler):
                self._previous[sig] = handler
                signal.signal(sig, self._hold)
        return self

    def __exit__(self, *_exc: object) -> None:
        self._restore()

    def check(self) -> None:
        """Run the held signal's original handler now (it normally raises)."""
        if self._pending is not None:
            self._fire(*self._pending)

    def _hold(self, sig: int, frame: FrameType | None) -> None:
        if self._pending is not None:  # a second signal: stop now, mid-step
            self._fire(sig, frame)
        else:
            self._pending = (sig, frame)

    def _fire(self, sig: int, frame: FrameType | None) -> None:
        handler = self._previous.get(sig)
        self._pending = None
        self._restore()
        if handler is not None:
            handler(sig, frame)

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
