"""What the bus says about the benchmark stack: stream position, each node's applied position,
each worker consumer's backlog. Readiness waits use these; latency is measured on the maps."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence

from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from contracts.subjects import STREAM_K8S, STREAM_STATUS, status_subject
from services.datapath.worker import durable_name


async def stream_state(js: JetStreamContext) -> tuple[int, int]:
    """(messages, last sequence) of WEIR_K8S."""
    info = await js.stream_info(STREAM_K8S)
    return int(info.state.messages), int(info.state.last_seq)


async def wait_published(js: JetStreamContext, at_least: int, within: float) -> int:
    """Wait until WEIR_K8S holds ``at_least`` messages and stops growing for a second; returns
    its last sequence."""
    deadline = time.monotonic() + within
    last, stable_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        try:
            messages, seq = await stream_state(js)
        except NotFoundError:
            messages, seq = 0, 0
        if seq != last:
            last, stable_since = seq, time.monotonic()
        elif messages >= at_least and time.monotonic() - stable_since >= 1.0:
            return seq
        await asyncio.sleep(0.2)
    raise TimeoutError(f"WEIR_K8S did not reach {at_least} messages within {within:.0f}s")


async def node_applied(js: JetStreamContext, node: str) -> int:
    """The WEIR_K8S sequence a node's last NodeStatus reports as applied (0 if none yet)."""
    try:
        msg = await js.get_last_msg(STREAM_STATUS, status_subject(node))
    except NotFoundError:
        return 0
    applied = json.loads(msg.data or b"{}").get("applied", {})
    return int(applied.get(STREAM_K8S, 0))


async def wait_applied(
    js: JetStreamContext, nodes: Sequence[str], seq: int, within: float
) -> dict[str, float]:
    """Wait until every node has applied ``seq``; returns node -> seconds it took."""
    start = time.monotonic()
    took: dict[str, float] = {}
    while len(took) < len(nodes):
        for node in nodes:
            if node not in took and await node_applied(js, node) >= seq:
                took[node] = time.monotonic() - start
        if time.monotonic() - start > within:
            missing = sorted(set(nodes) - set(took))
            raise TimeoutError(f"nodes {missing} did not apply seq {seq} within {within:.0f}s")
        await asyncio.sleep(0.1)
    return took


async def wait_status(js: JetStreamContext, node: str, within: float) -> None:
    """Wait for a node's first NodeStatus (its bootstrap is done, even on an empty stream)."""
    deadline = time.monotonic() + within
    while True:
        try:
            await js.get_last_msg(STREAM_STATUS, status_subject(node))
            return
        except NotFoundError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{node} published no status within {within:.0f}s") from None
            await asyncio.sleep(0.05)


async def backlog(js: JetStreamContext, node: str) -> int:
    """Messages the node's durable consumer has not yet acked (pending + in flight)."""
    info = await js.consumer_info(STREAM_K8S, durable_name(node))
    return int(info.num_pending or 0) + int(info.num_ack_pending or 0)
