"""services.common.wire: the bytes it writes are nats-py's, and its delivery hands out what
nats-py's subscription callbacks would get.

- Hypothesis: for any subject, reply, headers and payload, :func:`hpub` + :func:`header_block`
  give exactly the command the installed nats-py's ``Client.publish`` appends, and return None
  exactly where ``Client.publish`` raises (so the fallback raises as before).
- AckInbox's raw fast path settles what its ordinary callback settles, or declines untouched.
- Against a real nats-server: publish_batch through the wire stores what ``publish`` stores
  (headers and data), keeps ``out_msgs`` honest and survives a batch past ``pending_size``;
  a :class:`Delivery` handler gets the same messages as a plain subscription callback, a raw
  handler can decline, and a handler's exception goes to the error callback without stopping
  the read loop.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import PubAck

from contracts import subjects as s
from services.common.acks import AckInbox
from services.common.bus import MSG_ID_HEADER, Bus, Outgoing, publish, publish_batch
from services.common.wire import (
    _SLOW,
    _headers,
    delivery_for,
    header_block,
    hpub,
    msg_id_block,
    parse_header_lines,
)
from tests.conftest import eventually

_TEXT = st.text(st.sampled_from("aZ9._-:*>/ \t\r\né\u2028"), max_size=12)
_KEYS = st.one_of(st.sampled_from([MSG_ID_HEADER, "traceparent", " X-Pad ", ""]), _TEXT)
_VALUES = st.one_of(_TEXT, st.text(max_size=8), st.just("\ud800"))


def _run(coro: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine that never suspends (Client.publish with a capturing _send_command)."""
    try:
        coro.send(None)
    except StopIteration:
        return
    raise AssertionError("suspended")  # pragma: no cover


def _nats_py_bytes(
    subject: str, reply: str, headers: dict[str, str], payload: bytes
) -> bytes | BaseException:
    nc = Client()
    nc._status = Client.CONNECTED
    nc._max_payload = 1 << 20
    sent: list[bytes] = []

    async def capture(cmd: bytes, priority: bool = False) -> None:
        sent.append(cmd)

    nc._send_command = capture  # type: ignore[method-assign]
    try:
        _run(nc.publish(subject, payload, reply=reply, headers=headers))
    except Exception as exc:
        return exc
    assert len(sent) == 1 and nc.stats["out_msgs"] == 1
    return sent[0]


@settings(max_examples=400, deadline=None)
@given(
    subject=st.one_of(st.just("weir.v1.k8s.pod.ns.p"), _TEXT),
    reply=st.one_of(st.just(""), st.just("_INBOX.abc.0.17"), _TEXT),
    headers=st.dictionaries(_KEYS, _VALUES, max_size=4),
    payload=st.binary(max_size=64),
)
def test_hpub_is_what_nats_py_writes(
    subject: str, reply: str, headers: dict[str, str], payload: bytes
) -> None:
    theirs = _nats_py_bytes(subject, reply, headers, payload)
    block = header_block(headers)
    ours = hpub(subject, reply, block, payload) if block is not None else None
    if ours is None:
        assert isinstance(theirs, Exception), (block, theirs)
    else:
        assert ours == theirs


@settings(max_examples=300, deadline=None)
@given(msg_id=_VALUES)
def test_msg_id_block_is_the_general_block(msg_id: str) -> None:
    assert msg_id_block(msg_id) == header_block({MSG_ID_HEADER: msg_id})


_ACK_DATA = st.one_of(
    st.builds(
        lambda stream, seq, dup: json.dumps({"stream": stream, "seq": seq} | dup).encode(),
        st.text(max_size=6),
        st.integers(0, 2**64),
        st.sampled_from([{}, {"duplicate": True}, {"duplicate": False}, {"domain": "d"}]),
    ).map(lambda b: b.replace(b", ", b",").replace(b": ", b":")),
    st.binary(max_size=24),
)


def _recorder(sink: list[tuple[int, object]]) -> Callable[[int, object], None]:
    return lambda i, r: sink.append((i, r))


@settings(max_examples=400, deadline=None)
@given(
    data=_ACK_DATA,
    tail=st.one_of(
        st.sampled_from(["0.5", "1.12", "9.0", "0.x", "0.", "0.\u0661", "0.5.6"]), _TEXT
    ),
    headers=st.sampled_from([None, b"NATS/1.0 503\r\n\r\n"]),
)
def test_ack_fast_path_settles_what_the_callback_settles(
    data: bytes, tail: str, headers: bytes | None
) -> None:
    fast: list[tuple[int, object]] = []
    slow: list[tuple[int, object]] = []
    inboxes = AckInbox("_INBOX.t"), AckInbox("_INBOX.t")
    for inbox, sink in zip(inboxes, (fast, slow), strict=True):
        assert inbox.register(_recorder(sink)) == "_INBOX.t.0."
    subject = f"_INBOX.t.{tail}"
    if not inboxes[0]._on_raw(subject.encode(), data, headers):
        assert fast == []  # declined untouched: Delivery hands it to _on_reply instead
        return
    msg = Msg(_client=None, subject=subject, data=data, headers=None)  # type: ignore[arg-type]
    _run(inboxes[1]._on_reply(msg))
    assert fast == slow
    assert all(isinstance(r, PubAck) for _, r in fast)


async def _stored(bus: Bus, subject: str) -> bytes:
    msg = await bus.js.get_last_msg(s.STREAM_K8S, subject)
    return msg.data or b""


async def test_publish_batch_sends_what_publish_sends(bus: Bus) -> None:
    cases: list[tuple[str, dict[str, str] | None]] = [
        (" padded id ", None),
        ("id\r\nwith\nnewlines", None),
        ("plain", {"X-Extra": " v ", "  ": "skipped", MSG_ID_HEADER: "overridden"}),
        ("ünïcode", {"X-Unicode": "välue\r\n"}),
    ]
    seen: dict[str, Msg] = {}

    async def record(msg: Msg) -> None:
        seen[msg.subject] = msg

    await bus.nc.subscribe("weir.v1.k8s.pod.wire.*", cb=record)  # as it goes to NATS
    before = bus.nc.stats["out_msgs"]
    items = [
        Outgoing(s.k8s_subject("pod", "wire", f"b{i}"), f"d{i}".encode(), msg_id, headers)
        for i, (msg_id, headers) in enumerate(cases)
    ]
    acks = await publish_batch(bus.js, items)
    assert [a.seq for a in acks] == sorted(a.seq for a in acks) and len(acks) == len(cases)
    assert bus.nc.stats["out_msgs"] - before == len(cases)
    for i, (msg_id, headers) in enumerate(cases):
        await publish(bus.js, s.k8s_subject("pod", "wire", f"p{i}"), f"d{i}".encode(),
                      msg_id=f"{msg_id}", headers=headers)  # fmt: skip
    await eventually(lambda: len(seen) == 2 * len(cases))
    for i in range(len(cases)):
        batch, one = (
            seen[s.k8s_subject("pod", "wire", f"b{i}")],
            seen[s.k8s_subject("pod", "wire", f"p{i}")],
        )
        assert batch.data == one.data and batch.headers is not None and one.headers is not None
        # with tracing on (an earlier test may have installed a provider) each has its own span
        assert ("traceparent" in batch.headers) == ("traceparent" in one.headers)
        batch.headers.pop("traceparent", None), one.headers.pop("traceparent", None)
        assert batch.headers == one.headers
        assert await _stored(bus, batch.subject) == batch.data  # stored, not a duplicate


async def test_a_batch_past_pending_size_is_flushed_on_the_way(bus: Bus) -> None:
    limit = bus.nc._max_pending_size
    size = 16 * 1024
    n = limit // size + 20
    items = [
        Outgoing(s.k8s_subject("pod", "wire", f"big{i}"), bytes([i % 251]) * size, f"big-{i}")
        for i in range(n)
    ]
    acks = await publish_batch(bus.js, items, window=n)
    assert len(acks) == n and not any(a.duplicate for a in acks)
    data = await _stored(bus, s.k8s_subject("pod", "wire", f"big{n - 1}"))
    assert data == bytes([(n - 1) % 251]) * size


async def test_delivery_hands_out_what_a_callback_gets(bus: Bus) -> None:
    nc = bus.nc
    subject = "wire.delivery"
    plain: list[Msg] = []
    fast: list[Msg] = []

    async def collect(msg: Msg) -> None:
        plain.append(msg)

    await nc.subscribe(subject, cb=collect)
    hooked = await nc.subscribe(subject, cb=collect)  # its callback must not be called
    delivery = delivery_for(nc)
    assert delivery is not None and delivery_for(nc) is delivery
    delivery.msgs[hooked._id] = fast.append
    sent: list[tuple[bytes, dict[str, str] | None]] = [
        (b"no headers", None),
        (b"empty headers", {}),
        (b"", {"A": " spaced ", "B": "ü\r\nnl", "C": ""}),
        (b"x" * 70_000, {"Status": "503"}),
    ]
    before = nc.stats["in_msgs"]
    for data, headers in sent:
        await nc.publish(subject, data, reply="r.1", headers=headers)
    await nc.flush()
    await eventually(lambda: len(plain) == len(fast) == len(sent))
    key = [(m.subject, m.reply, m.data, m.headers, m.sid) for m in plain]
    assert [(m.subject, m.reply, m.data, m.headers, hooked._id) for m in fast] == [
        (a, b, c, d, hooked._id) for a, b, c, d, _ in key
    ]
    assert nc.stats["in_msgs"] - before == 2 * len(sent)
    assert hooked.delivered == len(sent)


async def test_raw_handler_declines_and_errors_reach_the_error_callback(bus: Bus) -> None:
    nc = bus.nc
    subject = "wire.raw"
    via_cb: list[bytes] = []
    raw: list[bytes] = []
    errors: list[Exception] = []

    async def collect(msg: Msg) -> None:
        via_cb.append(msg.data)

    def handle(subject: bytes, data: bytes, headers: bytes | None) -> bool:
        if data == b"boom":
            raise RuntimeError("boom")
        if data.startswith(b"mine"):
            raw.append(data)
            return True
        return False

    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    nc._error_cb = on_error
    sub = await nc.subscribe(subject, cb=collect)
    delivery = delivery_for(nc)
    assert delivery is not None
    delivery.raw[sub._id] = handle
    for data in (b"mine 1", b"other", b"boom", b"mine 2"):
        await nc.publish(subject, data)
    await nc.flush()
    await eventually(lambda: len(raw) == 2 and len(via_cb) == 1 and len(errors) == 1)
    assert raw == [b"mine 1", b"mine 2"] and via_cb == [b"other"]
    assert str(errors[0]) == "boom"
    del delivery.raw[sub._id]
    await nc.publish(subject, b"mine 3")
    await eventually(lambda: via_cb == [b"other", b"mine 3"])
    await asyncio.sleep(0)
    assert raw == [b"mine 1", b"mine 2"]


_HEADER_BYTES = st.lists(
    st.one_of(
        st.sampled_from(
            [
                b"Nats-Msg-Id: abc",
                b"traceparent:00-x",
                b" Spaced Name : v ",
                b"Tab\tName: v",
                b"v\x0bt:x",
                b"K: \xc3\xa9 \xff ",
                b"\xc3\xa9: v",
                b"no colon",
                b"",
            ]
        ),
        st.binary(max_size=16),
        st.builds(lambda a, b: a + b":" + b, st.binary(max_size=6), st.binary(max_size=10)),
    ),
    max_size=5,
).map(b"\r\n".join)


@settings(max_examples=500, deadline=None)
@given(lines=_HEADER_BYTES, status=st.sampled_from([b"", b" 503", b" 100 Idle Heartbeat"]))
def test_headers_are_what_nats_py_parses(lines: bytes, status: bytes) -> None:
    nc = Client()
    for block in (
        b"NATS/1.0" + status + b"\r\n" + lines + b"\r\n\r\n",
        b"NATS/1.0" + status + b"\r\n" + lines,
        lines,
    ):
        assert parse_header_lines(block) == Client._parse_header_lines(block)
        ours = _headers(block)
        if ours is _SLOW:
            continue
        coro = nc._process_headers(block)
        try:
            coro.send(None)
        except StopIteration as done:
            assert ours == done.value, block
        else:  # pragma: no cover
            raise AssertionError("suspended")
