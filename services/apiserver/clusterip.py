"""ClusterIP allocation from the service CIDR: pure bookkeeping, no I/O.

Allocation walks the range sequentially from a rotating cursor (as kube-apiserver's bitmap
allocator does with its offset), so creating N services costs O(N) rather than O(N^2), and a
freshly released address is not handed straight back out. The network address and the first
host address (reserved for the ``kubernetes`` service) are never allocated automatically; the
first one may still be requested explicitly.
"""

from __future__ import annotations

import ipaddress

from services.apiserver.status import ApiError


class ClusterIPAllocator:
    def __init__(self, cidr: str = "10.96.0.0/16") -> None:
        try:
            self.network = ipaddress.IPv4Network(cidr, strict=True)
        except ValueError as exc:
            raise ValueError(f"--service-cidr {cidr!r} is not an IPv4 network: {exc}") from exc
        if self.network.num_addresses < 8:
            raise ValueError(f"--service-cidr {cidr!r} is too small (need at least /29)")
        self._base = int(self.network.network_address)
        self._size = self.network.num_addresses
        # offsets 0 (network), 1 (kubernetes service) and size-1 (broadcast) are never automatic
        self._first, self._last = 2, self._size - 2
        self._cursor = self._first
        self._used: set[int] = set()

    @property
    def used(self) -> int:
        return len(self._used)

    def allocate(self) -> str:
        span = self._last - self._first + 1
        for i in range(span):
            off = self._first + (self._cursor - self._first + i) % span
            if off not in self._used:
                self._used.add(off)
                self._cursor = off + 1 if off < self._last else self._first
                return str(ipaddress.IPv4Address(self._base + off))
        raise ApiError(
            500,
            "InternalError",
            "Internal error occurred: failed to allocate a serviceIP: "
            f"range {self.network} is full",
        )

    def offset(self, ip: str) -> int | None:
        """Offset of ``ip`` inside the range; None if it is not an IPv4 address in the range."""
        try:
            addr = ipaddress.IPv4Address(ip)
        except ValueError:
            return None
        if addr not in self.network:
            return None
        return int(addr) - self._base

    def reserve(self, ip: str) -> str | None:
        """Claim a requested IP; returns an error message (for a 422 cause) or None on success."""
        off = self.offset(ip)
        if off is None or off in (0, self._size - 1):
            return (
                f"failed to allocate IP {ip}: the provided IP ({ip}) is not in the valid range. "
                f"The range of valid IPs is {self.network}"
            )
        if off in self._used:
            return f"failed to allocate IP {ip}: provided IP is already allocated"
        self._used.add(off)
        return None

    def release(self, ip: str, *, undo: bool = False) -> None:
        """Free ``ip``; ``undo`` also rewinds the cursor (a create that failed after allocating)."""
        off = self.offset(ip)
        if off is not None:
            self._used.discard(off)
            if undo and self._first <= off <= self._last:
                self._cursor = off
