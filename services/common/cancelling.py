"""Notice a cancellation that a library swallowed, so a long-running loop still stops.

Why this exists: on Python 3.11, ``asyncio.wait_for`` returns the inner result when the outer
task is cancelled at the moment the inner await completes (``except CancelledError: if
fut.done(): return fut.result()`` in asyncio/tasks.py; reimplemented on asyncio.timeout in 3.12).
nats-py awaits through ``wait_for`` in fetch, next_msg and every request (consumer info, publish
acks), so now and then a ``task.cancel()`` aimed at one of our consume loops is lost: the loop
goes on fetching, and whoever awaits the task (a shutdown, a test teardown) waits forever. CI
hung on exactly this.

The task still remembers the request: ``Task.cancelling()`` counts cancellations asked for and
not yet withdrawn (``uncancel``, which asyncio.timeout uses for its own). A loop that calls
:func:`raise_if_cancelled` once per round turns a lost cancellation back into a
``CancelledError`` at its next round; its ``finally`` blocks run as for any cancellation.
"""

from __future__ import annotations

import asyncio


def raise_if_cancelled() -> None:
    """Raise ``CancelledError`` when the current task was asked to stop but is still running."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
