"""BpfLBMap on real pinned maps: the reconciler's goldens, batches, full maps, bad entries.

The golden test runs the control plane's Reconciler against the kernel maps and expects the very
dump the fake produces (tests/datapath/testdata/*.golden): the real and the fake LBMap must be
indistinguishable to the reconciler.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.datapath.bpflayout import EntryError, MapCapacities, map_specs
from services.datapath.bpfmaps import BpfLBMap
from services.datapath.fakemaps import FakeLBMap
from services.datapath.lbmap import (
    INLINE_BACKENDS_MAX,
    PROTO_TCP,
    BackendState,
    BackendValue,
    FrontendValue,
    InlineBackend,
    MapFullError,
    RevNatValue,
    ServiceFlags,
    ServiceKey,
    ServiceValue,
)
from services.datapath.loader import SockLB
from services.datapath.reconcile import Reconciler
from services.datapath.render import render
from tests.datapath.bpf.conftest import SMALL, emptied_maps
from tests.datapath.manifests import desired, manifests

pytestmark = pytest.mark.bpf


@pytest.fixture(scope="module")
def loaded(pin_root: Path) -> Iterator[SockLB]:
    lb = SockLB(pin_root, SMALL)
    lb.load()
    try:
        yield lb
    finally:
        lb.close()


@pytest.fixture
def maps(loaded: SockLB) -> Iterator[BpfLBMap]:
    with emptied_maps(loaded) as m:
        yield m


def test_compiled_layout_matches_the_ctypes_mirror(loaded: SockLB) -> None:
    bpf = loaded._bpf
    for spec in map_specs(SMALL):
        table = bpf[spec.pin.encode()]
        leaf = getattr(table, "sLeaf", table.Leaf)
        assert ctypes.sizeof(table.Key) == ctypes.sizeof(spec.key), spec.pin
        assert ctypes.sizeof(leaf) == ctypes.sizeof(spec.value), spec.pin
        assert table.max_entries == spec.max_entries, spec.pin


@pytest.mark.parametrize("manifest", manifests(), ids=lambda p: p.stem)
def test_reconciler_goldens_on_kernel_maps(maps: BpfLBMap, manifest: Path) -> None:
    rec = Reconciler(maps)
    result = rec.apply(desired(manifest), prune=True)
    assert result.ok, result.errors
    assert render(maps.dump()) == manifest.with_suffix(".golden").read_text()
    fake = FakeLBMap()
    Reconciler(fake).apply(desired(manifest), prune=True)
    assert maps.dump() == fake.dump()
    # A restarted reconciler rebuilds from the kernel maps and has nothing to do.
    assert Reconciler(maps).apply(desired(manifest), prune=True).writes == 0


def test_roundtrip_of_every_field(maps: BpfLBMap) -> None:
    key = ServiceKey("10.96.255.254", 65535, 17, 0)
    value = ServiceValue(0, 65535, 65535, ServiceFlags.SESSION_AFFINITY | ServiceFlags.LOCAL_ONLY,
                         86400)  # fmt: skip
    slot = ServiceKey("10.96.255.254", 65535, 17, 7)
    maps.update_services({key: value, slot: ServiceValue(backend_id=2**32 - 1)})
    maps.update_backends({2**32 - 1: BackendValue("192.0.2.1", 1, 132, BackendState.TERMINATING)})
    maps.update_revnat({65535: RevNatValue("10.96.255.254", 65535)})
    state = maps.dump()
    assert state.services == {key: value, slot: ServiceValue(backend_id=2**32 - 1)}
    assert state.backends == {
        2**32 - 1: BackendValue("192.0.2.1", 1, 132, BackendState.TERMINATING)
    }
    assert state.revnat == {65535: RevNatValue("10.96.255.254", 65535)}
    inline = tuple(
        InlineBackend(2**32 - 1 - i, f"255.255.255.{255 - i}", 65535 - i)
        for i in range(INLINE_BACKENDS_MAX)
    )
    frontends = {
        key: FrontendValue(65535, 2**32 - 1, value.flags, 2**32 - 1),
        ServiceKey("10.96.0.1", 1, 6): FrontendValue(4, 1, ServiceFlags.LOCAL_ONLY, 0, inline),
    }
    maps.update_frontends(frontends)
    assert maps.dump().frontends == frontends


@pytest.mark.parametrize("batch", [True, False], ids=["batch", "per-entry"])
def test_large_batches_and_deleting_absent_keys(maps: BpfLBMap, batch: bool) -> None:
    for m in maps.maps.values():
        m.batch = batch  # False: the fallback for kernels without batch operations
    backends = {i: BackendValue(f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}", 80, 6)
                for i in range(1, 1001)}  # fmt: skip
    services = {ServiceKey("10.96.0.1", 80, PROTO_TCP, s): ServiceValue(backend_id=s)
                for s in range(1, 1001)}  # fmt: skip
    maps.update_backends(backends)
    maps.update_services(services)
    state = maps.dump()
    assert state.backends == backends
    assert state.services == services
    assert maps.fill()["backends"] == (1000, SMALL.backends)
    # Absent keys (0, and every id above 1000) interleaved with present ones are skipped.
    maps.delete_backends(range(0, 2001, 1))
    maps.delete_services([*services, ServiceKey("10.96.0.2", 80, PROTO_TCP, 1)])
    assert maps.dump().backends == {}
    assert maps.fill()["services"] == (0, SMALL.services)


@pytest.mark.parametrize("batch", [True, False], ids=["batch", "per-entry"])
def test_frontends_batches_fill_and_deleting_absent_keys(maps: BpfLBMap, batch: bool) -> None:
    maps.maps["frontends"].batch = batch
    frontends = {
        ServiceKey(f"10.96.{i >> 8}.{i & 255}", 80, PROTO_TCP): FrontendValue(
            i % 6, i, inline=tuple(InlineBackend(j, f"10.244.0.{j}", 8080) for j in range(i % 6))
        )
        if i % 6 <= INLINE_BACKENDS_MAX
        else FrontendValue(i % 6, i)
        for i in range(1, SMALL.revnat + 1)
    }
    maps.update_frontends(frontends)
    assert maps.dump().frontends == frontends
    assert maps.fill()["frontends"] == (SMALL.revnat, SMALL.revnat)
    with pytest.raises(MapFullError, match=r"frontends: writing ServiceKey\(vip='10.96.9.9'"):
        maps.update_frontends({ServiceKey("10.96.9.9", 80, PROTO_TCP): FrontendValue(0, 1)})
    gone = list(frontends)[::2]
    maps.delete_frontends([*gone, ServiceKey("10.96.9.9", 80, PROTO_TCP)])  # absent: skipped
    assert maps.dump().frontends == {k: v for k, v in frontends.items() if k not in gone}


def test_full_map_names_the_map_and_the_entry(pin_root: Path) -> None:
    tiny = MapCapacities(services=8, backends=8, revnat=8, affinity=8, sk_revnat=8)
    lb = SockLB(pin_root, tiny, version="tiny")
    lb.load()
    try:
        with lb.maps() as m:
            with pytest.raises(MapFullError) as info:
                m.update_backends({i: BackendValue("10.0.0.1", 80, 6) for i in range(1, 11)})
            assert info.value.map_name == "backends"
            assert "writing 9" in str(info.value) and "map full (8 entries)" in str(info.value)
            assert sorted(m.dump().backends) == list(range(1, 9))  # what fitted was written
            m.update_backends({3: BackendValue("10.0.0.3", 81, 6)})  # updating still works
            m.maps["backends"].batch = False  # the per-entry fallback reports the same
            with pytest.raises(MapFullError, match=r"backends: writing 9: map full"):
                m.update_backends({i: BackendValue("10.0.0.1", 80, 6) for i in range(1, 11)})
    finally:
        lb.close()


def inline_backends(n: int) -> tuple[InlineBackend, ...]:
    return tuple(InlineBackend(i, f"10.244.0.{i}", 8080) for i in range(1, n + 1))


@pytest.mark.parametrize(
    ("write", "field"),
    [
        (lambda m: m.update_services({ServiceKey("10.96.0.1", 70000, 6): ServiceValue()}), "port"),
        (lambda m: m.update_services({ServiceKey("nope", 80, 6): ServiceValue()}), "vip"),
        (
            lambda m: m.update_services({ServiceKey("10.96.0.1", 80, 6): ServiceValue(count=-1)}),
            "count",
        ),
        (lambda m: m.update_backends({1: BackendValue("10.0.0.1", 80, 6, 9)}), "state"),  # type: ignore[arg-type]
        (lambda m: m.update_backends({2**32: BackendValue("10.0.0.1", 80, 6)}), "id"),
        (lambda m: m.update_revnat({1: RevNatValue("::1", 80)}), "vip"),
        (
            lambda m: m.update_frontends(
                {ServiceKey("10.96.0.1", 80, 6): FrontendValue(2, 1, inline=inline_backends(1))}
            ),
            "inline",
        ),
        (
            lambda m: m.update_frontends(
                {ServiceKey("10.96.0.1", 80, 6, 1): FrontendValue(1, 1, inline=inline_backends(1))}
            ),
            "slot",
        ),
        (lambda m: m.delete_frontends([ServiceKey("10.96.0.1", 80, 6, 3)]), "slot"),
    ],
)
def test_bad_entries_name_map_entry_and_field(maps: BpfLBMap, write: object, field: str) -> None:
    assert callable(write)
    with pytest.raises(EntryError) as info:
        write(maps)
    assert info.value.field == field
    assert f"field {field}:" in str(info.value)
    assert maps.dump() == type(maps.dump())()  # nothing was written
