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

The syscall plumbing (prog query, prog fd by id, run-time statistics) lives in
services/datapath/bpfsys.py.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

from services.datapath import bpfsys

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
    return ProgStats(*bpfsys.prog_run_stats(prog_fd))


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
    return bpfsys.prog_get_fd_by_id(ids[0])


@contextmanager
def stats_enabled() -> Iterator[None]:
    """BPF run-time statistics on for the duration of the block (off again when the last holder
    closes its fd, or dies)."""
    fd = bpfsys.enable_run_time_stats()
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
