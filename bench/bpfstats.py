"""The kernel's own run-time statistics of an attached BPF program: Weir's cost without the noise.

Why this exists: connect() latency on this VM moves by more than Weir's whole overhead from one
round to the next (the floor is bimodal), so the ratio to the floor alone cannot tell a cheaper
connect4 from a luckier host. With BPF statistics on, the kernel adds the time spent inside each
program run to the program's ``run_time_ns`` and counts runs in ``run_cnt``
(BPF_OBJ_GET_INFO_BY_FD); the difference over a measurement divided by the runs is the
nanoseconds Weir itself adds to each connect(), whatever the rest of the host is doing.

Statistics are switched on with BPF_ENABLE_STATS rather than the ``kernel.bpf_stats_enabled``
sysctl: the kernel keeps them on while the returned fd is open and turns them off when it is
closed, also when the process is killed, so a crashed benchmark can never leave a global setting
changed. The program measured is the one the kernel has attached to the cgroup (PROG_QUERY, then
PROG_GET_FD_BY_ID), not a handle the harness hopes is the same.

The syscall plumbing comes from services/datapath/bpfsys.py (which has no prog-info command).
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

from services.datapath import bpfsys
from services.datapath.bpfsys import _attr as attr  # the shared syscall plumbing
from services.datapath.bpfsys import _bpf as bpf

PROG_GET_FD_BY_ID = 13
ENABLE_STATS = 32
STATS_RUN_TIME = 0  # enum bpf_stats_type
PROG_INFO_SIZE = 232  # sizeof(struct bpf_prog_info), kernel 6.x uapi
RUN_TIME_NS_OFFSET = 192  # offsetof(struct bpf_prog_info, run_time_ns); run_cnt follows
ATTACH_CGROUP_INET4_CONNECT = 10


class ProgStats(NamedTuple):
    run_time_ns: int
    run_cnt: int

    def __sub__(self, before: tuple[int, ...]) -> ProgStats:
        return ProgStats(self.run_time_ns - before[0], self.run_cnt - before[1])

    @property
    def ns_per_run(self) -> float:
        return self.run_time_ns / self.run_cnt if self.run_cnt else float("nan")


def prog_stats(prog_fd: int) -> ProgStats:
    """run_time_ns and run_cnt of a program (both 0 while statistics were never on)."""
    info = ctypes.create_string_buffer(PROG_INFO_SIZE)
    fields = ((0, "I", prog_fd), (4, "I", PROG_INFO_SIZE), (8, "Q", ctypes.addressof(info)))
    bpf(bpfsys.OBJ_GET_INFO_BY_FD, attr(*fields))
    run_time, run_cnt = (ctypes.c_uint64 * 2).from_buffer(info, RUN_TIME_NS_OFFSET)
    return ProgStats(int(run_time), int(run_cnt))


def attached_prog_fd(cgroup: Path, attach_type: int = ATTACH_CGROUP_INET4_CONNECT) -> int:
    """A new fd on the one program attached to ``cgroup`` at ``attach_type`` (ValueError when
    there is none, or more than one)."""
    cg_fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
    try:
        ids = bpfsys.prog_query(cg_fd, attach_type)
    finally:
        os.close(cg_fd)
    if len(ids) != 1:
        raise ValueError(f"cgroup {cgroup}: attach type {attach_type} has programs {ids}, not one")
    return bpf(PROG_GET_FD_BY_ID, attr((0, "I", ids[0])))


@contextmanager
def stats_enabled() -> Iterator[None]:
    """BPF run-time statistics on for the duration of the block (off again when the last holder
    closes its fd, or dies)."""
    fd = bpf(ENABLE_STATS, attr((0, "I", STATS_RUN_TIME)))
    try:
        yield
    finally:
        os.close(fd)


class ProgMeter:
    """Reads one attached program's statistics; ``since(start)`` is the cost over a span."""

    def __init__(self, cgroup: Path, attach_type: int = ATTACH_CGROUP_INET4_CONNECT) -> None:
        self.fd = attached_prog_fd(cgroup, attach_type)

    def read(self) -> ProgStats:
        return prog_stats(self.fd)

    def close(self) -> None:
        os.close(self.fd)
