"""Read bpf/policy.c's flow events from its pinned BPF ring buffer, as typed records.

Why a small mmap consumer instead of bcc's ``open_ring_buffer``: bcc can only read a ring buffer
through the BPF object that compiled it, but the buffer is pinned and outlives every worker; a
restarted worker, or an operator tool that compiles nothing, opens the pin and goes on reading
where the last reader stopped (the consumer position lives in the kernel's shared page). The
protocol is the kernel's (kernel/bpf/ringbuf.c, as libbpf's ring_buffer__consume): a read-write
consumer-position page at offset 0, then a read-only producer-position page and the data area
mapped twice, so a record that wraps is contiguous. Each record has an 8-byte header {len with
BUSY and DISCARD bits, page offset} and is padded to 8 bytes. x86_64 only (as bpfsys): its
ordering makes plain loads and stores of the positions acquire/release.

Threading: ``poll()`` blocks in poll(2) on the map fd, so the reader runs in a thread;
``pump()`` loops until asked to stop and hands each event to a callback, for example
``loop.call_soon_threadsafe(queue.put_nowait, event)`` to feed an asyncio queue. Events the
datapath could not record (ring buffer full) are counted in the kernel; ``lost`` reports them.
"""

from __future__ import annotations

import ctypes
import enum
import mmap
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from services.datapath import bpfsys
from services.datapath.bpfmaps import possible_cpus
from services.datapath.policybpf import percpu_sum
from services.datapath.policylayout import (
    MAP_TYPE_RINGBUF,
    POLICY_COUNTERS,
    FlowEventRecord,
    ip_str,
)
from services.datapath.policymap import Direction

_BUSY = 1 << 31
_DISCARD = 1 << 30
_HDR = 8
_RECORD = ctypes.sizeof(FlowEventRecord)
_LOST_INDEX = POLICY_COUNTERS.index("events_lost")


class Verdict(enum.IntEnum):
    """Hubble's flow.Verdict numbers."""

    VERDICT_UNKNOWN = 0
    FORWARDED = 1
    DROPPED = 2
    ERROR = 3
    AUDIT = 4
    REDIRECTED = 5
    TRACED = 6
    TRANSLATED = 7


class ObservationPoint(enum.IntEnum):
    """Hubble's flow.TraceObservationPoint numbers (the two this datapath reports)."""

    FROM_ENDPOINT = 5
    TO_ENDPOINT = 101


# Cilium's drop reasons (pkg/monitor/api/drop.go) that bpf/policy.c can report.
DROP_REASONS = {133: "Policy denied", 134: "Invalid packet"}
DROP_POLICY_DENIED = 133


class FlowEventError(Exception):
    """The ring buffer cannot be opened or is not the one this reader understands."""


@dataclass(frozen=True, slots=True)
class RawFlowEvent:
    """One event of bpf/policy.c, decoded; ports in host order, addresses dotted."""

    ktime_ns: int  # CLOCK_MONOTONIC, as recorded by the datapath
    time_ns: int  # wall clock (ns since the epoch), derived from ktime_ns
    verdict: Verdict
    drop_reason: int  # 0 when forwarded, else a Cilium drop reason (133 = policy denied)
    saddr: str
    daddr: str
    sport: int
    dport: int
    proto: int
    tcp_flags: int
    src_identity: int
    dst_identity: int
    endpoint_id: int
    direction: Direction  # the endpoint's: INGRESS = to the pod, EGRESS = from the pod
    is_reply: bool
    ifindex: int
    observation_point: ObservationPoint

    @property
    def drop_reason_desc(self) -> str:
        return (
            DROP_REASONS.get(self.drop_reason, f"reason {self.drop_reason}")
            if self.drop_reason
            else ""
        )


def decode_event(data: bytes, wall_offset_ns: int = 0) -> RawFlowEvent:
    """Decode one record; raises FlowEventError naming the field on a value it does not know."""
    if len(data) != _RECORD:
        raise FlowEventError(f"flow event: record is {len(data)} bytes, expected {_RECORD}")
    raw = FlowEventRecord.from_buffer_copy(data)
    try:
        verdict = Verdict(raw.verdict)
    except ValueError:
        raise FlowEventError(f"flow event: field verdict: unknown value {raw.verdict}") from None
    try:
        point = ObservationPoint(raw.obs_point)
    except ValueError:
        raise FlowEventError(
            f"flow event: field obs_point: unknown value {raw.obs_point}"
        ) from None
    return RawFlowEvent(
        ktime_ns=raw.ktime_ns,
        time_ns=raw.ktime_ns + wall_offset_ns,
        verdict=verdict,
        drop_reason=raw.drop_reason,
        saddr=ip_str(raw.saddr),
        daddr=ip_str(raw.daddr),
        sport=socket.ntohs(raw.sport),
        dport=socket.ntohs(raw.dport),
        proto=raw.proto,
        tcp_flags=raw.tcp_flags,
        src_identity=raw.src_identity,
        dst_identity=raw.dst_identity,
        endpoint_id=raw.endpoint_id,
        direction=Direction(raw.direction & 1),
        is_reply=bool(raw.is_reply),
        ifindex=raw.ifindex,
        observation_point=point,
    )


def wall_offset_ns() -> int:
    """Add to a CLOCK_MONOTONIC timestamp to get wall-clock ns."""
    return time.time_ns() - time.clock_gettime_ns(time.CLOCK_MONOTONIC)


class FlowEventReader:
    """Consumer of the pinned ``policy_events`` ring buffer (one reader at a time)."""

    def __init__(self, pin: Path, counters_pin: Path | None = None) -> None:
        self.pin = Path(pin)
        try:
            self.fd = bpfsys.obj_get(self.pin)
        except OSError as exc:
            raise FlowEventError(f"cannot open ring buffer {self.pin}: {exc.strerror}") from exc
        self._cons: mmap.mmap | None = None
        self._prod: mmap.mmap | None = None
        self._counters_fd = -1
        try:
            info = bpfsys.map_info(self.fd)
            if info.type != MAP_TYPE_RINGBUF:
                raise FlowEventError(f"{self.pin} is not a ring buffer (map type {info.type})")
            self.size = info.max_entries
            self._mask = self.size - 1
            page = mmap.PAGESIZE
            self._cons = mmap.mmap(self.fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            self._prod = mmap.mmap(
                self.fd, page + 2 * self.size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page
            )
            self._data = page
            counters = counters_pin or self.pin.with_name("policy_counters")
            if counters.exists():
                self._counters_fd = bpfsys.obj_get(counters)
        except Exception:
            self.close()
            raise
        self._ncpu = possible_cpus()
        self._wall = wall_offset_ns()
        self.malformed = 0  # records skipped because they did not decode

    def close(self) -> None:
        for m in (self._cons, self._prod):
            if m is not None:
                m.close()
        self._cons = self._prod = None
        for fd in (self.fd, self._counters_fd):
            if fd >= 0:
                os.close(fd)
        self.fd = self._counters_fd = -1

    def __enter__(self) -> FlowEventReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def lost(self) -> int:
        """Events the datapath could not record since its maps were created (ring full)."""
        if self._counters_fd < 0:
            return 0
        return percpu_sum(self._counters_fd, _LOST_INDEX, self._ncpu)

    def drain(self) -> list[RawFlowEvent]:
        """Every complete record available now, without waiting."""
        cons, prod = self._cons, self._prod
        if cons is None or prod is None:
            raise FlowEventError(f"ring buffer {self.pin}: reader is closed")
        out: list[RawFlowEvent] = []
        (cons_pos,) = struct.unpack_from("<Q", cons, 0)
        while True:
            (prod_pos,) = struct.unpack_from("<Q", prod, 0)
            if cons_pos >= prod_pos:
                break
            progressed = False
            while cons_pos < prod_pos:
                at = self._data + (cons_pos & self._mask)
                (length,) = struct.unpack_from("<I", prod, at)
                if length & _BUSY:
                    break  # the producer is still writing this record
                progressed = True
                length &= ~(_BUSY | _DISCARD) & 0xFFFFFFFF
                if not struct.unpack_from("<I", prod, at)[0] & _DISCARD:
                    try:
                        out.append(decode_event(prod[at + _HDR : at + _HDR + length], self._wall))
                    except FlowEventError:
                        self.malformed += 1
                cons_pos += (length + _HDR + 7) // 8 * 8
                struct.pack_into("<Q", cons, 0, cons_pos)
            if not progressed:
                break
        return out

    def poll(self, timeout: float | None = None) -> list[RawFlowEvent]:
        """Wait up to ``timeout`` seconds (None = forever) for events, then drain them."""
        events = self.drain()
        if events:
            return events
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        poller.poll(None if timeout is None else max(0, int(timeout * 1000)))
        return self.drain()

    def pump(
        self,
        sink: Callable[[RawFlowEvent], None],
        stop: threading.Event,
        *,
        interval: float = 0.2,
    ) -> None:
        """Hand every event to ``sink`` until ``stop`` is set (checked every ``interval`` s).
        Meant for a thread: ``threading.Thread(target=reader.pump, args=(sink, stop))``."""
        while not stop.is_set():
            for event in self.poll(interval):
                sink(event)
