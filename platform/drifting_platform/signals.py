"""Signal handling shared by the training loops and the sweep driver: `SignalScope`."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Optional

__all__ = ["SignalScope"]


class SignalScope:
    """SIGINT / SIGTERM while a run or a sweep is active (a context manager).

    The first signal only records itself (`signum`) and says so; a second one raises
    KeyboardInterrupt at once. The previous handlers come back on exit; `arm()` installs ours
    again after a library (`ray.init`) replaced them. Inert outside the main thread (signal
    handlers can only be set there) and when `enabled` is False. Subclasses change what a
    signal does (`_handler`): `train.kit.StopSignals` stops a loop at a step boundary,
    `launch.sweep.Interrupts` stops Tune's experiment."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, enabled: bool = True, *, announce: str = "stopping at the end of this step"):
        self.enabled = enabled
        self.announce = announce
        self.signum: Optional[int] = None
        self._previous: dict = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handler(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: aborted")
        self.signum = signum
        print(f"\n{signal.Signals(signum).name} received: {self.announce} (again to abort at once)", file=sys.stderr, flush=True)

    @property
    def installed(self) -> bool:
        return bool(self._previous)

    def __enter__(self) -> "SignalScope":
        self.arm()
        return self

    def arm(self) -> None:
        """Install the handlers (again, after a library such as `ray.init` replaced them);
        `__exit__` restores what was there before the first time."""
        if self.enabled and threading.current_thread() is threading.main_thread():  # signal.signal works there only
            for sig in self.SIGNALS:
                self._previous.setdefault(sig, signal.signal(sig, self._handler))

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}
