"""The service CIDR(s) a node refuses unknown addresses in: parsing and the LPM-trie codec (pure).

Why it exists: kube-proxy REJECTs a ClusterIP without endpoints, and a connect() to an address
of the service range that no Service owns (deleted, or a port it does not have) has nothing to
reach: without help it hangs until a timeout (a blackhole route) or fails with ENETUNREACH.
bpf/sock_lb.c refuses those with ECONNREFUSED when the address falls inside one of the ranges
in ``lb4_service_ranges``, an LPM trie the loader fills once at install time. The ranges are the
cluster's ``--service-cluster-ip-range``; Weir defaults to Kubernetes' common default
10.96.0.0/12 (kubeadm's). Parsing names the option and the value on bad input, so a typo fails
at start-up instead of refusing (or failing to refuse) traffic.
"""

from __future__ import annotations

import ctypes
import ipaddress
import socket
from collections.abc import Iterable

DEFAULT_SERVICE_CIDRS = ("10.96.0.0/12",)
MAP_SERVICE_RANGES = "service_ranges"
SERVICE_RANGES_MAX = 16  # a cluster has one or two service ranges; room to grow, no more


class Lb4RangeKey(ctypes.Structure):
    """struct lb4_range_key in bpf/lb4_maps.h (the value is one u8, always 1)."""

    _fields_ = [("prefixlen", ctypes.c_uint32), ("address", ctypes.c_uint32)]


def parse_service_cidrs(
    values: Iterable[str], option: str = "--service-cidr"
) -> tuple[ipaddress.IPv4Network, ...]:
    """Validate IPv4 CIDRs (host bits must be zero); sorted and de-duplicated."""
    nets: set[ipaddress.IPv4Network] = set()
    for value in values:
        try:
            net = ipaddress.ip_network(value.strip(), strict=True)
        except ValueError as exc:
            raise ValueError(f"{option}: {value!r} is not an IPv4 CIDR ({exc})") from None
        if not isinstance(net, ipaddress.IPv4Network):
            raise ValueError(f"{option}: {value!r} is not IPv4 (IPv6 services come later)")
        nets.add(net)
    if len(nets) > SERVICE_RANGES_MAX:
        raise ValueError(f"{option}: {len(nets)} ranges, at most {SERVICE_RANGES_MAX}")
    return tuple(sorted(nets))


def encode_range(net: ipaddress.IPv4Network) -> Lb4RangeKey:
    address = int.from_bytes(net.network_address.packed, "little")  # bytes in network order
    return Lb4RangeKey(prefixlen=net.prefixlen, address=address)


def decode_range(raw: Lb4RangeKey) -> ipaddress.IPv4Network:
    address = socket.inet_ntoa(int(raw.address).to_bytes(4, "little"))
    return ipaddress.IPv4Network(f"{address}/{raw.prefixlen}")
