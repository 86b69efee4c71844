"""A test run that is terminated (a CI timeout, ``kill``, ``pkill -f pytest``) still tears its fixtures down.

The Temporal servers the fixtures start are children of the SDK's core, which this process cannot give a
parent-death signal; on SIGTERM Python would exit at once and leave them running, listening, holding memory
(seen: a dev server outliving its terminated ``pytest``). SIGTERM is turned into ``KeyboardInterrupt``, on which
pytest stops the run and finalises every fixture: ``env.shutdown()`` stops each server.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"terminated by signal {signum}: tearing the fixtures down")


def tear_down_on_sigterm() -> None:
    """Install the handler (only the main thread may set one)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)
