"""How many entries the services map holds, from the reconciler's mirror, counted incrementally.

Why: every NodeStatus reports each LB map's entries, and the services map's count is the masters
plus every frontend's slots. Walking the slots of 10,000 frontends costs ~0.3 ms; with a status
after nearly every change (up to 20/s) and ten workers sharing two cores, that walk alone was
a visible share of the per-change CPU. A reconcile only rewrites the slots of the frontends it
targets (``plan`` touches nothing else, a prune targets every realised frontend), so the count
moves by what those frontends held after the apply minus what they held before.

Any doubt means a full recount on the next read: a mirror that was replaced (a resync after a
failed write) or an apply that reported errors. The caller reads through :meth:`count` only
once its applies all go through :meth:`before`/:meth:`after` (the worker's consume loop; the
bootstrap's full apply precedes the first read).
"""

from __future__ import annotations

from collections.abc import Collection
from itertools import repeat

from services.datapath.frontend import Frontend
from services.datapath.realised import Realised


class ServiceEntries:
    """Masters + slots of the mirror, kept up to date across applies (see module doc)."""

    def __init__(self) -> None:
        self._mirror: Realised | None = None  # the mirror ``_slots`` was counted on
        self._slots = 0
        self.recounts = 0  # full walks so far (tests)

    def count(self, realised: Realised) -> int:
        if realised is not self._mirror:
            self._mirror, self._slots = realised, sum(map(len, realised.slots.values()))
            self.recounts += 1
        return len(realised.masters) + self._slots

    @staticmethod
    def before(realised: Realised, touched: Collection[Frontend]) -> int:
        """Slots ``touched`` hold now; pass the result to :meth:`after` once applied."""
        # C-level iteration (map) instead of a generator: runs twice per batch over every target
        return sum(map(len, map(realised.slots.get, touched, repeat(()))))

    def after(
        self, realised: Realised, touched: Collection[Frontend], before: int, *, ok: bool
    ) -> None:
        """Account one apply of ``touched`` (``ok``: it reported no errors)."""
        if not ok or realised is not self._mirror:
            self._mirror = None  # recount on the next read
            return
        self._slots += self.before(realised, touched) - before

    def invalidate(self) -> None:
        self._mirror = None
