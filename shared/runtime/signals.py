"""Graceful stop: the first SIGTERM or SIGINT asks the loop to stop at its next safe point (train.py
saves a checkpoint first); a second SIGINT stops at once."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from types import FrameType

log = logging.getLogger(__name__)


class StopRequest:
    def __init__(self, on_stop: Callable[[], None] | None = None) -> None:
        self.requested = False
        self.on_stop = on_stop
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._handle)

    def __bool__(self) -> bool:
        return self.requested

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        log.info("%s received: stopping at the next safe point", signal.Signals(signum).name)
        if self.on_stop:
            self.on_stop()
