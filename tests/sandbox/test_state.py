"""The state file: round trip, atomic replace, clear errors for a corrupt file."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.sandbox.state import (
    FileStateStore,
    MemoryStateStore,
    PodRecord,
    SandboxState,
    StateError,
    StateStore,
)


def sample() -> SandboxState:
    state = SandboxState(sandbox_id="ab12", nodes=["n1"])
    assert state.remember("netns", "weir-ab12-fabric")
    assert not state.remember("netns", "weir-ab12-fabric")
    state.pods["default/a"] = PodRecord(
        "default",
        "a",
        "n1",
        "weir-ab12-pod-x",
        "10.244.1.2",
        "weir-ab12/n1/pods/default_a",
        "lxcx",
        pid=42,
    )
    return state


@pytest.mark.parametrize("kind", ["file", "memory"])
def test_round_trip_and_delete(kind: str, tmp_path: Path) -> None:
    store: StateStore = FileStateStore(tmp_path) if kind == "file" else MemoryStateStore()
    assert store.load("ab12") is None
    store.save(sample())
    assert store.load("ab12") == sample()
    assert store.list_ids() == ["ab12"]
    store.delete("ab12")
    store.delete("ab12")  # idempotent
    assert store.load("ab12") is None and store.list_ids() == []


def test_file_save_is_atomic_replace(tmp_path: Path) -> None:
    store = FileStateStore(tmp_path)
    store.save(sample())
    (tmp_path / "ab12" / "logs").mkdir()
    (tmp_path / "ab12" / "logs" / "a.log").write_text("x")
    state = sample()
    state.forget("netns", "weir-ab12-fabric")
    store.save(state)
    assert [p.name for p in (tmp_path / "ab12").iterdir() if p.name.startswith(".")] == []
    loaded = store.load("ab12")
    assert loaded is not None and loaded.netns == []
    store.delete("ab12")  # also removes the logs
    assert not (tmp_path / "ab12").exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not JSON"),
        ("[]", "top level must be an object"),
        ('{"version": 9, "sandbox_id": "x"}', "version: 9"),
        ('{"version": 1}', "missing field"),
        ('{"version": 1, "sandbox_id": "x", "colour": 1}', "unexpected or missing field"),
        ('{"version": 1, "sandbox_id": "x", "netns": "weir-x"}', "netns: must be a list"),
    ],
)
def test_corrupt_state_names_file_and_field(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "state.json").write_text(text)
    with pytest.raises(StateError, match=message) as info:
        FileStateStore(tmp_path).load("x")
    assert str(tmp_path / "x" / "state.json") in str(info.value)
