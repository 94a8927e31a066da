"""HPUB commands for a pipelined batch, written to nats-py's outgoing buffer directly.

Why: ``Client.publish`` costs ~4 us of Python per message before a byte moves (two subject
checks, a ``bytearray`` grown header by header with a regex check, ``strip`` and ``translate``
per header, an f-string command, the stats and a ``_flush_pending`` coroutine), and a relist
publishes 20k messages whose headers differ only in the msg id. :class:`Wire` builds the very
same command bytes (``HPUB <subject> <reply> <hdr len> <total len>``, the ``NATS/1.0`` header
block in dict order with values trimmed and CR/LF turned into spaces) with one join, appends
them to the client's pending buffer as ``Client._send_command`` does (same size accounting,
same forced flush past ``pending_size``, same ``out_msgs``/``out_bytes`` stats) and kicks the
flusher once per run instead of once per message. Nothing is reordered: the buffer is the one
``Client.publish`` appends to, in call order.

Anything unusual returns None from :func:`hpub` / :meth:`Wire.ready` is False, and the caller
uses ``Client.publish``, which then raises (or buffers) exactly as before: a subject with white
space or CR/LF, a header name nats-py rejects, a payload over the server's ``max_payload``, text
that does not encode, a connection that is not plainly CONNECTED (reconnecting, draining,
closed). :func:`wire_for` returns None when the client lacks any of the internals used here
(a nats-py that changed them), so the caller falls back to ``Client.publish`` for everything.
tests/common/test_wire.py pins the bytes to what the installed nats-py writes.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping

import nats.aio.client
from nats.aio.client import Client
from nats.aio.msg import Msg

__all__ = [
    "Delivery",
    "Wire",
    "delivery_for",
    "header_block",
    "hpub",
    "msg_id_block",
    "wire_for",
]

_HDR_LINE = b"NATS/1.0\r\n"
_NEWLINES = str.maketrans({"\r": " ", "\n": " "})  # nats-py's _HEADER_VALUE_NEWLINES
_BAD_SUBJECT = re.compile(r"[ \t\r\n]")  # nats-py's _SUBJECT_INVALID_RE (publish: no strict)
_HEADER_KEY = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # nats-py's _HEADER_KEY_RE
_MSG_ID_PREFIX = _HDR_LINE + b"Nats-Msg-Id: "
_PARSE_EMAIL = getattr(nats.aio.client, "parse_email", None)  # nats-py's optional header parser

# what wire_for needs of a Client; any missing: every message goes through Client.publish
_INTERNALS = (
    "_pending",
    "_pending_data_size",
    "_max_pending_size",
    "_max_payload",
    "_flush_queue",
    "_flush_pending",
    "_status",
    "stats",
)


def _value(text: str) -> str:
    text = text.strip()
    if "\r" in text or "\n" in text:
        return text.translate(_NEWLINES)
    return text


def msg_id_block(msg_id: str) -> bytes | None:
    """The header block nats-py writes for ``{"Nats-Msg-Id": msg_id}``; None if it would not."""
    try:
        return b"%s%s\r\n\r\n" % (_MSG_ID_PREFIX, _value(msg_id).encode())
    except UnicodeEncodeError:
        return None


def header_block(headers: Mapping[str, str]) -> bytes | None:
    """The header block nats-py writes for ``headers`` (empty names skipped); None where
    ``Client.publish`` would raise (a name it rejects, text that does not encode)."""
    parts = [_HDR_LINE]
    try:
        for k, v in headers.items():
            key = k.strip()
            if not key:
                continue
            if not _HEADER_KEY.fullmatch(key):
                return None
            parts.append(f"{key}: {_value(v)}\r\n".encode())
    except (UnicodeEncodeError, AttributeError, TypeError):
        return None
    parts.append(b"\r\n")
    return b"".join(parts)


def hpub(subject: str, reply: str, header: bytes, payload: bytes) -> bytes | None:
    """The HPUB command nats-py writes; None where ``Client.publish`` would raise on the
    subject or reply (empty, white space, CR/LF) or the text does not encode."""
    if not subject or _BAD_SUBJECT.search(subject) or (reply and _BAD_SUBJECT.search(reply)):
        return None
    hlen = len(header)
    try:
        line = f"HPUB {subject} {reply} {hlen} {hlen + len(payload)}\r\n".encode()
    except UnicodeEncodeError:
        return None
    return b"".join((line, header, payload, b"\r\n"))


class Wire:
    """One client's outgoing buffer, for commands built by :func:`hpub` (see module doc)."""

    __slots__ = ("nc",)

    def __init__(self, nc: Client) -> None:
        self.nc = nc

    def ready(self, payload: bytes) -> bool:
        """Whether ``Client.publish`` of ``payload`` would append it and nothing else now."""
        nc = self.nc
        return nc._status == Client.CONNECTED and len(payload) <= nc._max_payload

    def push(self, cmd: bytes, payload_size: int) -> bool:
        """Append one command as ``Client._send_publish`` does; True when the buffer is past
        ``pending_size`` and the caller must ``await force_flush()`` before the next."""
        nc = self.nc
        nc._pending.append(cmd)
        nc._pending_data_size += len(cmd)
        stats = nc.stats
        stats["out_msgs"] += 1
        stats["out_bytes"] += payload_size
        return 0 < nc._max_pending_size < nc._pending_data_size

    async def force_flush(self) -> None:
        await self.nc._flush_pending(force_flush=True)

    async def kick(self) -> None:
        """Have the flusher write what is pending when the loop next runs (what every
        ``Client.publish`` does when no flush is queued yet)."""
        queue = self.nc._flush_queue
        if queue is not None and queue.empty():
            await self.nc._flush_pending()


def wire_for(nc: Client) -> Wire | None:
    """A :class:`Wire` for ``nc``; None if this nats-py lacks an internal it uses."""
    if not all(hasattr(nc, name) for name in _INTERNALS):  # pragma: no cover - other nats-py
        return None
    if not isinstance(nc.stats, dict) or not isinstance(nc._pending, list):  # pragma: no cover
        return None
    return Wire(nc)


# -- receiving ---------------------------------------------------------------------------------

RawHandler = Callable[[bytes, bytes, bytes | None], bool]
MsgHandler = Callable[[Msg], None]


_SLOW: dict[str, str] = {}  # sentinel of _headers: ask nats-py's _process_headers
_KEYS: dict[bytes, str | None] = {}  # header name as sent -> nats-py's key (None: skipped)


def parse_header_lines(raw: bytes) -> dict[str, str]:
    """``Client._parse_header_lines`` with each distinct name checked once (a message carries
    the same few names; nats-py decodes and scans every name of every message for white space)."""
    out: dict[str, str] = {}
    keys = _KEYS
    for line in raw.split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        try:
            key = keys[name]
        except KeyError:
            key = _key(name)
            if len(keys) < 1024:
                keys[name] = key
        if key is not None:
            out[key] = value.strip().decode("utf-8", "replace")
    return out


def _key(name: bytes) -> str | None:
    try:
        key = name.strip().decode("ascii")
    except UnicodeDecodeError:
        return None
    return None if any(c.isspace() for c in key) else key


def _headers(block: bytes) -> dict[str, str] | None:
    """``Client._process_headers`` of a block without an inline status (``NATS/1.0 503``);
    ``_SLOW`` for one with a status, one with no header line (nats-py: None, or an IndexError
    for a bare ``NATS/1.0``), or a nats-py that parses headers another way (``fast_mail_parser``
    installed)."""
    if len(block) <= 10 or block[8] == 0x20 or _PARSE_EMAIL is not None:
        return _SLOW
    return parse_header_lines(block[10:]) or None


class Delivery:
    """Messages of chosen subscriptions handed to a plain function from the read loop.

    Why: ``Client._process_msg`` builds every message and puts it on the subscription's queue,
    from which the subscription's task takes it and awaits the callback coroutine: a queue put,
    a task wake-up, a get and a coroutine per message, plus the ``Msg`` itself even for a PubAck
    that is read once. Installed as the client's ``_process_msg`` (what its parser calls), this
    does the same bookkeeping (``in_msgs``/``in_bytes``, the subscription's received count) and
    then calls, for a registered subscription,
    - a raw handler with the undecoded ``subject``, ``data`` and header bytes, which returns
      False to have the message go the ordinary way (it must not act then), or
    - a message handler with the ``Msg`` nats-py would have built (same headers parsing, same
      ``msg_class``), called in arrival order instead of from the subscription's task.
    Every other message, and every message of a subscription with a message limit, a JetStream
    binding or a future, goes through the original ``_process_msg`` unchanged. An exception of a
    handler goes to the client's error callback, as one from a subscription callback does.
    """

    def __init__(self, nc: Client, original: Callable[..., Awaitable[None]]) -> None:
        self.nc = nc
        self.original = original
        self.raw: dict[int, RawHandler] = {}
        self.msgs: dict[int, MsgHandler] = {}

    async def __call__(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        raw = self.raw.get(sid)
        handler = self.msgs.get(sid) if raw is None else None
        if raw is None and handler is None:
            await self.original(sid, subject, reply, data, headers)
            return
        nc = self.nc
        sub = nc._subs.get(sid)
        if sub is None or sub._max_msgs > 0 or sub._jsi is not None or sub._future is not None:
            await self.original(sid, subject, reply, data, headers)
            return
        try:
            if raw is not None:
                if not raw(subject, data, headers):
                    await self.original(sid, subject, reply, data, headers)
                    return
                stats = nc.stats
                stats["in_msgs"] += 1
                stats["in_bytes"] += len(data)
                sub._received += 1
                return
            stats = nc.stats
            stats["in_msgs"] += 1
            stats["in_bytes"] += len(data)
            sub._received += 1
            hdr = None
            if headers:
                hdr = _headers(headers)
                if hdr is _SLOW:
                    hdr = await nc._process_headers(headers)
            msg = nc._build_message(sid, subject, reply, data, hdr)
            if msg and handler is not None:
                handler(msg)
        except Exception as exc:  # as from a subscription callback: the error callback's
            await nc._error_cb(exc)


def delivery_for(nc: Client) -> Delivery | None:
    """The connection's :class:`Delivery`, installed on first use; None if this nats-py lacks
    what it relies on (then subscriptions keep their ordinary callbacks)."""
    current = nc.__dict__.get("_process_msg")
    if isinstance(current, Delivery):
        return current
    if current is not None or not all(
        hasattr(nc, name)
        for name in ("_subs", "_process_headers", "_build_message", "_error_cb", "stats")
    ):  # pragma: no cover - somebody else hooked it, or another nats-py
        return None
    delivery = Delivery(nc, nc._process_msg)
    nc._process_msg = delivery  # type: ignore[method-assign]
    return delivery
