"""A relist is published in pieces while the next piece is normalised; vanished DELETEs come last.

The listing comes from the real stand-in over HTTP; the sink is the in-memory twin, held at a gate
so the test can see the next piece being normalised while one is in flight.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from services.watcher import reflector as reflector_module
from services.watcher.kube import ApiSource
from services.watcher.observe import make_normaliser
from services.watcher.reflector import Reflector, SinkError
from services.watcher.sink import MemorySink
from services.watcher.state import (
    Action,
    Delete,
    Fingerprint,
    ObjectKey,
    Observation,
    PublishedIndex,
    Upsert,
)
from tests.apiserver.conftest import Kube
from tests.watcher import kubeops
from tests.watcher.samples import sample


class GatedSink(MemorySink):
    """Records each send as one batch; the first send waits for ``gate``."""

    def __init__(self, fail_after: int | None = None) -> None:
        super().__init__(fail_after)
        self.batches: list[list[Action]] = []
        self.gate = asyncio.Event()
        self.first_send = asyncio.Event()

    async def send(self, actions: Sequence[Action]) -> Sequence[Action]:
        if not self.first_send.is_set():
            self.first_send.set()
            await self.gate.wait()
        self.batches.append(list(actions))
        return await super().send(actions)


def _key(name: str) -> ObjectKey:
    return ObjectKey("service", "default", name)


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reflector_module, "RELIST_CHUNK", 5)
    monkeypatch.setattr(reflector_module, "RELIST_YIELD_EVERY", 2)


@pytest.mark.usefixtures("small_chunks")
async def test_relist_publishes_pieces_while_normalising_the_next(kube: Kube) -> None:
    created = [
        await kubeops.create(kube, "service", sample("service", f"web-{i:02}")) for i in range(12)
    ]
    index = PublishedIndex()
    index.seed(_key("gone"), Fingerprint("uid-gone", "1", "d"))
    recreated = created[7]["metadata"]["name"]
    index.seed(_key(recreated), Fingerprint("uid-old", "1", "d"))
    normalised: list[str] = []
    inner = make_normaliser("t")

    def normalise(kind: str, obj: Any) -> Observation:
        normalised.append(obj["metadata"]["name"])
        return inner(kind, obj)

    sink = GatedSink()
    reflector = Reflector("service", ApiSource(kube.api), sink, index, normalise)
    relist = asyncio.create_task(reflector.relist("start"))
    await asyncio.wait_for(sink.first_send.wait(), 10)
    for _ in range(200):  # the second piece is normalised while the first is in flight
        if len(normalised) >= 10:
            break
        await asyncio.sleep(0.01)
    assert len(normalised) == 10, normalised
    assert not relist.done()
    sink.gate.set()
    await asyncio.wait_for(relist, 10)

    assert [len(b) for b in sink.batches] == [5, 6, 2, 1]  # piece 2 holds DELETE+UPSERT
    second = sink.batches[1]
    pair = [a for a in second if isinstance(a, Delete | Upsert) and a.key == _key(recreated)]
    assert [type(a) for a in pair] == [Delete, Upsert]
    assert pair[0].fingerprint.uid == "uid-old"
    assert sink.batches[-1] == [Delete(_key("gone"), Fingerprint("uid-gone", "1", "d"))]
    assert index.get(_key("gone")) is None
    assert {k.name for k in index.keys("service")} == {o["metadata"]["name"] for o in created}
    assert reflector.synced.is_set()


@pytest.mark.usefixtures("small_chunks")
async def test_a_failing_piece_stops_the_relist_and_records_what_was_accepted(
    kube: Kube,
) -> None:
    for i in range(12):
        await kubeops.create(kube, "service", sample("service", f"web-{i:02}"))
    index = PublishedIndex()
    index.seed(_key("gone"), Fingerprint("uid-gone", "1", "d"))
    sink = GatedSink(fail_after=7)
    sink.gate.set()
    reflector = Reflector("service", ApiSource(kube.api), sink, index, make_normaliser("t"))
    with pytest.raises(SinkError):
        await reflector.relist("start")
    assert len(list(index.keys("service"))) == 1 + 7  # the seeded one and the accepted upserts
    assert index.get(_key("gone")) is not None, "no vanished DELETE before the listing was sent"
    assert not reflector.synced.is_set()
