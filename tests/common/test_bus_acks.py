"""publish_batch's ack path against a real nats-server: per-message errors, shared reply inbox.

The fast path no longer uses nats-py's per-message futures: one wildcard reply subscription per
connection routes each PubAck to its batch by the reply subject. These tests pin what callers
rely on: an error PubAck fails exactly its own message (others are acked and counted), a subject
without a stream fails after the retries, concurrent batches on one connection get their own
acks in their own order, and an empty batch or a batch after a failure still works.
"""

from __future__ import annotations

import asyncio
import gc
import json
import time
import weakref

import pytest
from nats.aio.msg import Msg
from nats.js.api import PubAck
from nats.js.errors import APIError, BadRequestError, NoStreamResponseError

from contracts import subjects as s
from services.common.acks import ack_inbox, outcome
from services.common.bus import (
    Bus,
    Outgoing,
    PublishBatchError,
    PublishError,
    connect_bus,
    publish_batch,
)
from tests.conftest import NatsServer


def _items(prefix: str, n: int) -> list[Outgoing]:
    return [
        Outgoing(s.k8s_subject("pod", "acks", f"{prefix}{i}"), f"{i}".encode(), f"{prefix}-{i}")
        for i in range(n)
    ]


async def test_error_pubacks_fail_only_their_own_messages(bus: Bus) -> None:
    items = _items("e", 30)
    # an expectation the stream rejects: every third message carries a wrong last sequence
    for i in range(0, 30, 3):
        items[i] = items[i]._replace(headers={"Nats-Expected-Last-Subject-Sequence": "999"})
    started = time.monotonic()
    with pytest.raises(PublishBatchError) as caught:
        await publish_batch(bus.js, items, window=7, ack_timeout=20.0)
    assert time.monotonic() - started < 10.0  # an error reply settles at once, no ack timeout
    errors = caught.value.errors
    assert sorted(errors) == list(range(0, 30, 3))
    for err in errors.values():
        assert isinstance(err, PublishError) and "msg id e-" in str(err)
        assert isinstance(err.__cause__, APIError) and err.__cause__.err_code == 10071
    acks = caught.value.acks
    assert [i for i, a in enumerate(acks) if a is None] == sorted(errors)
    info = await bus.js.stream_info(s.STREAM_K8S)
    assert info.state.messages == 20
    stored = await bus.js.get_last_msg(s.STREAM_K8S, items[1].subject)
    assert stored.headers is not None and stored.headers["Nats-Msg-Id"] == "e-1"


async def test_subject_without_a_stream_fails_after_retries(bus: Bus) -> None:
    items = [*_items("n", 3), Outgoing("no-stream.here", b"x", "lost-1"), *_items("m", 3)]
    with pytest.raises(PublishBatchError) as caught:
        await publish_batch(bus.js, items, window=2, attempts=2)
    assert list(caught.value.errors) == [3]
    err = caught.value.errors[3]
    assert isinstance(err, PublishError) and "no-stream.here" in str(err)
    assert sum(a is not None for a in caught.value.acks) == 6


async def test_concurrent_batches_share_one_inbox_and_keep_their_acks(bus: Bus) -> None:
    first, second = _items("a", 400), _items("b", 300)
    acks_a, acks_b = await asyncio.gather(
        publish_batch(bus.js, first, window=16), publish_batch(bus.js, second, window=64)
    )
    assert len(acks_a) == 400 and len(acks_b) == 300
    # each batch's acks are its own messages, in input order (per-subject order kept)
    assert [a.seq for a in acks_a] == sorted(a.seq for a in acks_a)
    assert [a.seq for a in acks_b] == sorted(a.seq for a in acks_b)
    for o, ack in [(first[7], acks_a[7]), (second[299], acks_b[299])]:
        stored = await bus.js.get_msg(s.STREAM_K8S, ack.seq)
        assert stored.subject == o.subject and stored.data == o.data
    assert await ack_inbox(bus.js) is await ack_inbox(bus.js)
    subs = [sid for sid, sub in bus.nc._subs.items() if sub.subject.endswith(".>")]
    assert len(subs) == 1


async def test_empty_batch_and_a_batch_after_a_failed_one(bus: Bus) -> None:
    assert await publish_batch(bus.js, []) == []
    with pytest.raises(PublishBatchError):
        await publish_batch(bus.js, [Outgoing("no-stream.x", b"x", "gone")], attempts=1)
    acks = await publish_batch(bus.js, _items("after", 5))
    assert [a.duplicate for a in acks] == [None] * 5
    again = await publish_batch(bus.js, _items("after", 5))
    assert all(a.duplicate for a in again) and [a.seq for a in again] == [a.seq for a in acks]


@pytest.mark.parametrize(
    "data",
    [
        b'{"stream":"WEIR_K8S","seq":42}',
        b'{"stream":"WEIR_K8S","seq":42,"duplicate":true}',
        b'{"stream":"WEIR_K8S","domain":"hub","seq":7}',
        b'{"stream":"WEIR_K8S","seq":9,"duplicate":false,"batch":"b1"}',
        b'{"stream":"W\\"K","seq":1}',
        b'{ "stream": "WEIR_K8S", "seq": 3 }',
    ],
)
def test_outcome_reads_what_nats_py_reads(data: bytes) -> None:
    msg = Msg(_client=None, subject="_INBOX.x.0.1", data=data)  # type: ignore[arg-type]
    assert outcome(msg) == PubAck.from_response(json.loads(data))


def test_outcome_of_errors_names_the_reply() -> None:
    def of(data: bytes, headers: dict[str, str] | None = None) -> object:
        msg = Msg(_client=None, subject="_INBOX.x.0.5", data=data, headers=headers)  # type: ignore[arg-type]
        return outcome(msg)

    assert isinstance(of(b"", {"Status": "503"}), NoStreamResponseError)
    err = of(b'{"error":{"code":400,"err_code":10071,"description":"wrong last sequence: 0"}}')
    assert isinstance(err, BadRequestError) and err.err_code == 10071
    for bad in (b"not json", b"[1]", b'{"seq":1}', b'{"stream":"S","seq":1,"error":{"x":1}}'):
        err = of(bad)
        assert isinstance(err, APIError) and "_INBOX.x.0.5" in str(err.description), bad


async def test_a_closed_connection_is_not_kept_alive_by_its_inbox(
    nats_server: NatsServer, bus: Bus
) -> None:
    other = await connect_bus(nats_server.url, "pytest-inbox")
    assert len(await publish_batch(other.js, _items("gc", 3))) == 3
    ref = weakref.ref(other.nc)
    await other.close()
    del other
    for _ in range(3):
        await asyncio.sleep(0.05)
        gc.collect()
    assert ref() is None
