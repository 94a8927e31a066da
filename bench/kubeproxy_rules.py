"""The ruleset kube-proxy (iptables mode) would write for N Services, as iptables-restore input.

The benchmark's kube-proxy contender must walk the same chains a real cluster walks, so this
reproduces the shape of pkg/proxy/iptables/proxier.go: ``OUTPUT -> KUBE-SERVICES`` holds one rule
per service port matching ``-d VIP -p tcp --dport``; it jumps to ``KUBE-SVC-<hash>`` which picks an
endpoint with ``-m statistic --mode random --probability 1/(n-i)``; each ``KUBE-SEP-<hash>`` marks
hairpin traffic for masquerade and DNATs to the endpoint. Chain names are kube-proxy's: the first
16 characters of base32(sha256(servicePortName + protocol [+ endpoint])).

Pure text generation, no I/O: the benchmark pipes it into ``iptables-restore`` inside a network
namespace it created.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class BenchService:
    namespace: str
    name: str
    vip: str
    port: int
    endpoints: Sequence[tuple[str, int]]
    protocol: str = "tcp"

    @property
    def port_name(self) -> str:
        return f"{self.namespace}/{self.name}:p{self.port}"


def _chain(prefix: str, *parts: str) -> str:
    digest = hashlib.sha256("".join(parts).encode()).digest()
    return prefix + base64.b32encode(digest).decode()[:16]


def service_chain(svc: BenchService) -> str:
    return _chain("KUBE-SVC-", svc.port_name, svc.protocol)


def endpoint_chain(svc: BenchService, ip: str, port: int) -> str:
    return _chain("KUBE-SEP-", svc.port_name, svc.protocol, f"{ip}:{port}")


def _lines(services: Sequence[BenchService]) -> Iterator[str]:
    yield "*nat"
    for chain in ("KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"):
        yield f":{chain} - [0:0]"
    for svc in services:
        yield f":{service_chain(svc)} - [0:0]"
        for ip, port in svc.endpoints:
            yield f":{endpoint_chain(svc, ip, port)} - [0:0]"
    yield '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES'
    yield '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING'
    yield "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000"
    yield "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN"
    yield "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000"
    yield "-A KUBE-POSTROUTING -j MASQUERADE --random-fully"
    for svc in services:
        chain = service_chain(svc)
        yield (
            f'-A KUBE-SERVICES -m comment --comment "{svc.port_name} cluster IP" '
            f"-m {svc.protocol} -p {svc.protocol} -d {svc.vip}/32 --dport {svc.port} -j {chain}"
        )
        n = len(svc.endpoints)
        for i, (ip, port) in enumerate(svc.endpoints):
            sep = endpoint_chain(svc, ip, port)
            remaining = n - i
            statistic = (
                f"-m statistic --mode random --probability {1.0 / remaining:.10f} "
                if remaining > 1
                else ""
            )
            comment = f'-m comment --comment "{svc.port_name} -> {ip}:{port}"'
            yield f"-A {chain} {comment} {statistic}-j {sep}"
            yield f'-A {sep} -m comment --comment "{svc.port_name}" -s {ip}/32 -j KUBE-MARK-MASQ'
            yield (
                f'-A {sep} -m comment --comment "{svc.port_name}" -m {svc.protocol} '
                f"-p {svc.protocol} -j DNAT --to-destination {ip}:{port}"
            )
    yield (
        '-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports" '
        "-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"
    )
    yield "COMMIT"


def ruleset(services: Sequence[BenchService]) -> str:
    """iptables-restore input for the whole nat table kube-proxy would own."""
    return "\n".join(_lines(services)) + "\n"
