"""``weir observe``'s pure half: Hubble's filter flags, the server-side subject, the renderings.

Why this shape: Hubble users know ``hubble observe``'s flags and its compact line, so both are
kept; everything that decides (does a flow match, which subject narrows the stream on the
server, what a line looks like, what ``--since`` means) is a pure function here and
table-tested, and ``observe_cli`` only moves messages. Flags combine like Hubble's: different
flags AND together, a repeated flag ORs its values, and ``--pod``/``--namespace``/``--identity``
match either end of a flow. The node and, when there is exactly one, the verdict go into the
subject filter (``weir.v1.flows.<node>.<verdict>``) so the server skips the rest.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from contracts.subjects import PREFIX, escape_token
from contracts.v1 import VERDICTS, Flow, FlowEndpoint
from services.ops.output import EXIT_USAGE, Column, OpsError

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DROP_TEXT = {"POLICY_DENIED": "Policy denied", "INVALID_PACKET_DROPPED": "Invalid packet"}
_FLAG_ORDER = ("syn", "ack", "fin", "rst", "psh", "urg", "ece", "cwr")


def _pod_ref(text: str, flag: str) -> tuple[str | None, str]:
    ns, sep, name = text.partition("/")
    if not sep:
        return None, text
    if not ns or not name or "/" in name:
        raise OpsError(f"{flag}: {text!r} is not [namespace/]name", EXIT_USAGE)
    return ns, name


def parse_since(text: str, now: datetime) -> datetime:
    """``5m``, ``90s``, ``1.5h``, ``2d`` before ``now``, or an RFC 3339 time."""
    m = _DURATION.match(text.strip())
    if m:
        return now - timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise OpsError(
            f"--since: {text!r} is neither a duration (5m, 30s, 2h) nor an RFC 3339 time",
            EXIT_USAGE,
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


@dataclass(frozen=True)
class FlowFilter:
    verdicts: tuple[str, ...] = ()
    from_pods: tuple[tuple[str | None, str], ...] = ()
    to_pods: tuple[tuple[str | None, str], ...] = ()
    pods: tuple[tuple[str | None, str], ...] = ()
    to_services: tuple[tuple[str, str], ...] = ()
    namespaces: tuple[str, ...] = ()
    identities: tuple[int, ...] = ()
    nodes: tuple[str, ...] = ()
    since: datetime | None = None

    @classmethod
    def from_flags(
        cls,
        *,
        verdicts: Sequence[str] = (),
        from_pods: Sequence[str] = (),
        to_pods: Sequence[str] = (),
        pods: Sequence[str] = (),
        to_services: Sequence[str] = (),
        namespaces: Sequence[str] = (),
        identities: Sequence[int] = (),
        nodes: Sequence[str] = (),
        since: datetime | None = None,
    ) -> FlowFilter:
        wrong = [v for v in verdicts if v.upper() not in VERDICTS]
        if wrong:
            raise OpsError(
                f"--verdict: {wrong[0]!r} is not one of {', '.join(VERDICTS)}", EXIT_USAGE
            )
        services = []
        for s in to_services:
            ns, name = _pod_ref(s, "--to-service")
            if ns is None:
                raise OpsError(f"--to-service: {s!r} is not namespace/name", EXIT_USAGE)
            services.append((ns, name))
        return cls(
            verdicts=tuple(v.upper() for v in verdicts),
            from_pods=tuple(_pod_ref(p, "--from-pod") for p in from_pods),
            to_pods=tuple(_pod_ref(p, "--to-pod") for p in to_pods),
            pods=tuple(_pod_ref(p, "--pod") for p in pods),
            to_services=tuple(services),
            namespaces=tuple(namespaces),
            identities=tuple(identities),
            nodes=tuple(nodes),
            since=since,
        )

    def subject(self) -> str:
        """The narrowest single subject filter for the server."""
        node = escape_token(self.nodes[0]) if len(self.nodes) == 1 else "*"
        verdict = self.verdicts[0] if len(self.verdicts) == 1 else "*"
        return f"{PREFIX}.flows.{node}.{verdict}"

    def matches(self, flow: Flow) -> bool:
        src, dst = flow.source, flow.destination
        checks = (
            (self.verdicts, lambda: flow.verdict in self.verdicts),
            (self.nodes, lambda: flow.node_name in self.nodes),
            (self.from_pods, lambda: any(_is_pod(src, p) for p in self.from_pods)),
            (self.to_pods, lambda: any(_is_pod(dst, p) for p in self.to_pods)),
            (self.pods, lambda: any(_is_pod(e, p) for p in self.pods for e in (src, dst))),
            (self.namespaces, lambda: src.namespace in self.namespaces
             or dst.namespace in self.namespaces),
            (self.identities, lambda: src.identity in self.identities
             or dst.identity in self.identities),
            (self.to_services, lambda: flow.destination_service is not None
             and (flow.destination_service.namespace, flow.destination_service.name)
             in self.to_services),
        )  # fmt: skip
        if self.since is not None and flow.time < self.since:
            return False
        return all(check() for values, check in checks if values)  # type: ignore[no-untyped-call]


def _is_pod(ep: FlowEndpoint, ref: tuple[str | None, str]) -> bool:
    ns, name = ref
    return ep.pod_name == name and (ns is None or ep.namespace == ns)


# --- rendering --------------------------------------------------------------------------------


def _port(flow: Flow, source: bool) -> int | None:
    if flow.l4 is None:
        return None
    l4 = flow.l4.tcp or flow.l4.udp
    assert l4 is not None
    return l4.source_port if source else l4.destination_port


def endpoint_text(flow: Flow, source: bool) -> str:
    """``ns/pod:port (ID:n)`` or ``ip:port (ID:n)``, as Hubble's compact output."""
    ep = flow.source if source else flow.destination
    where = f"{ep.namespace}/{ep.pod_name}" if ep.namespace and ep.pod_name else None
    where = where or (flow.ip.source if source else flow.ip.destination)
    port = _port(flow, source)
    return f"{where}:{port} (ID:{ep.identity})" if port else f"{where} (ID:{ep.identity})"


def tcp_flags_text(flow: Flow) -> str:
    if flow.l4 is None or flow.l4.tcp is None or flow.l4.tcp.flags is None:
        return ""
    flags = flow.l4.tcp.flags
    names = [n.upper() for n in _FLAG_ORDER if getattr(flags, n)]
    return f"TCP Flags: {', '.join(names)}" if names else ""


def summary(flow: Flow) -> str:
    """The event type as Hubble prints it: drop reason for drops, else the observation point."""
    if flow.verdict == "DROPPED":
        reason = flow.drop_reason_desc or "DROP_REASON_UNKNOWN"
        return _DROP_TEXT.get(reason, reason)
    return flow.trace_observation_point.lower().replace("_", "-")


def compact(flow: Flow, *, local: bool = True) -> str:
    """``Nov 26 22:51:03.123: a -> b to-endpoint FORWARDED (TCP Flags: SYN)``."""
    when = flow.time.astimezone() if local else flow.time
    stamp = when.strftime("%b %d %H:%M:%S.") + f"{when.microsecond // 1000:03d}"
    src, dst = endpoint_text(flow, True), endpoint_text(flow, False)
    if flow.is_reply is None:
        arrow = "<>"
    elif flow.is_reply:
        src, dst, arrow = dst, src, "<-"
    else:
        arrow = "->"
    line = f"{stamp}: {src} {arrow} {dst} {summary(flow)} {flow.verdict}"
    flags = tcp_flags_text(flow)
    if flow.l4 is not None and flow.l4.udp is not None:
        flags = "UDP"
    return f"{line} ({flags})" if flags else line


TABLE_COLUMNS = (
    Column("time", "TIME"),
    Column("node", "NODE"),
    Column("source", "SOURCE"),
    Column("destination", "DESTINATION"),
    Column("type", "TYPE"),
    Column("verdict", "VERDICT"),
    Column("summary", "SUMMARY"),
)


def table_row(flow: Flow) -> dict[str, str]:
    return {
        "time": flow.time.astimezone().strftime("%b %d %H:%M:%S.%f")[:-3],
        "node": flow.node_name,
        "source": endpoint_text(flow, True),
        "destination": endpoint_text(flow, False),
        "type": summary(flow),
        "verdict": flow.verdict,
        "summary": tcp_flags_text(flow) or ("UDP" if flow.l4 and flow.l4.udp else ""),
    }


@dataclass
class LastN:
    """Keeps the newest ``n`` matching flows (``n`` 0 = all)."""

    n: int
    flows: list[Flow] = field(default_factory=list)

    def add(self, flow: Flow) -> None:
        self.flows.append(flow)
        if self.n and len(self.flows) > self.n:
            del self.flows[0]
