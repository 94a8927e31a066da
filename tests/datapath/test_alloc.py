"""IdAllocator.allocate_many is the batched allocate(): checked against one-at-a-time allocation
on small id ranges, so wrap-around, ids held by other keys and exhaustion are all reached."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.datapath.alloc import IdAllocator, IdSpaceExhaustedError

Op = tuple[str, list[int]]
ops = st.lists(
    st.one_of(
        st.tuples(st.just("alloc"), st.lists(st.integers(0, 12), max_size=6)),
        st.tuples(st.just("release"), st.lists(st.integers(1, 9), max_size=3)),
        st.tuples(st.just("reserve"), st.lists(st.integers(1, 9), max_size=2)),
    ),
    max_size=25,
)


def _run(alloc: IdAllocator[int], op: Op, batched: bool) -> object:
    verb, args = op
    if verb == "release":
        for ident in args:
            alloc.release_id(ident)
        return None
    if verb == "reserve":
        for ident in args:
            alloc.reserve(ident)
        return None
    done: list[int] = []
    try:
        if batched:
            return alloc.allocate_many(args)
        for key in args:
            done.append(alloc.allocate(key))
        return done
    except IdSpaceExhaustedError as exc:
        return ("exhausted", str(exc))


@settings(max_examples=300, deadline=None)
@given(ops)
def test_allocate_many_is_allocate_in_turn(seq: list[Op]) -> None:
    one, many = IdAllocator[int]("ids", 1, 9), IdAllocator[int]("ids", 1, 9)
    for op in seq:
        assert _run(many, op, True) == _run(one, op, False)
        assert all(many.get(k) == one.get(k) for k in range(13))
        assert all(many.key_of(i) == one.key_of(i) for i in range(1, 10))


def test_allocate_many_raises_when_the_range_is_used_up() -> None:
    alloc = IdAllocator[str]("backend ids", 1, 3)
    assert alloc.allocate_many(["a", "b", "a", "c"]) == [1, 2, 1, 3]
    with pytest.raises(IdSpaceExhaustedError, match="backend ids"):
        alloc.allocate_many(["d"])
