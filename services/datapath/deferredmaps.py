"""An LBMap whose maps are still being created: the loader child compiles while the worker syncs.

Why: a new node has no pinned maps, so its worker must run the loader child (bcc compile, load,
attach: about a CPU-second) before it can write anything. Nothing before the first write needs
the maps, though: connecting to the bus, reading the snapshot and decoding it into the desired
state take as long again, and on two cores the two run side by side. So the worker gets this
LBMap at once; a background thread runs ``open_maps`` (the child, then opening the pins) and
every map operation waits for it. The reconciler reads its mirror on first use, which the
worker's bootstrap does only after decoding, so the wait is usually over by then.

``fill()`` is the one call that does not wait: the worker reads the capacities when it is built,
and those are known before the maps exist (they are compiled in from the same specs the maps are
checked against). Until the maps are open every map reports 0 entries: this process has written
nothing yet. A failure of ``open_maps`` (e.g. a pin of another shape) is raised by the first
operation that waits, with the loader's own message.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from typing import Protocol

from services.datapath.lbmap import (
    BackendValue,
    FrontendValue,
    LBMap,
    LBMapState,
    RevNatValue,
    ServiceKey,
    ServiceValue,
)


class ClosableLBMap(LBMap, Protocol):
    def close(self) -> None: ...


class DeferredLBMap:
    """LBMap over maps that ``open_maps`` (run in a thread from construction on) returns."""

    def __init__(
        self, open_maps: Callable[[], ClosableLBMap], capacities: Mapping[str, int]
    ) -> None:
        self._capacities = dict(capacities)
        self._future: Future[ClosableLBMap] = Future()
        self._thread = threading.Thread(
            target=self._open, args=(open_maps,), name="open-maps", daemon=True
        )
        self._thread.start()

    def _open(self, open_maps: Callable[[], ClosableLBMap]) -> None:
        try:
            self._future.set_result(open_maps())
        except BaseException as exc:  # handed to whoever waits for the maps
            self._future.set_exception(exc)

    @property
    def ready(self) -> bool:
        """True once the maps are open (or opening them failed)."""
        return self._future.done()

    def settled(self) -> None:
        """Block until opening the maps has ended, however it ended (never raises): the policy
        loop's compile waits on this, so one compile runs at a time (``mapsopen``)."""
        self._thread.join()

    def wait(self, timeout: float | None = None) -> ClosableLBMap:
        """The open maps; raises what opening them raised."""
        return self._future.result(timeout)

    def close(self) -> None:
        """Close the maps once opened; a loader child still running is waited for (it pins
        what it creates, so stopping it halfway would only leave work for the next start)."""
        self._thread.join()
        if self._future.exception() is None:
            self._future.result().close()

    # --- LBMap -----------------------------------------------------------------------------

    def update_backends(self, items: Mapping[int, BackendValue]) -> None:
        self.wait().update_backends(items)

    def delete_backends(self, ids: Iterable[int]) -> None:
        self.wait().delete_backends(ids)

    def update_services(self, items: Mapping[ServiceKey, ServiceValue]) -> None:
        self.wait().update_services(items)

    def delete_services(self, keys: Iterable[ServiceKey]) -> None:
        self.wait().delete_services(keys)

    def update_revnat(self, items: Mapping[int, RevNatValue]) -> None:
        self.wait().update_revnat(items)

    def delete_revnat(self, ids: Iterable[int]) -> None:
        self.wait().delete_revnat(ids)

    def update_frontends(self, items: Mapping[ServiceKey, FrontendValue]) -> None:
        self.wait().update_frontends(items)

    def delete_frontends(self, keys: Iterable[ServiceKey]) -> None:
        self.wait().delete_frontends(keys)

    def dump(self) -> LBMapState:
        return self.wait().dump()

    def fill(self) -> dict[str, tuple[int, int]]:
        if self._future.done() and self._future.exception() is None:
            return self._future.result().fill()
        return {name: (0, capacity) for name, capacity in self._capacities.items()}
