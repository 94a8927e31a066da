"""The JetStream streams and KV buckets Weir needs, and idempotent provisioning of them.

Why a declarative table plus a diff: every process may call :func:`provision` at start-up, in any
order and concurrently, and an operator may change a limit in a new release. So provisioning is
"make it so": create what is missing, compare what exists field by field against the table
(:func:`config_diff`, pure) and update only when a field differs. A field the server cannot
change in place (storage type, for example) is reported as a :class:`ProvisionError` that names
the stream and the field instead of a bare server error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, KeyValueConfig, StorageType, StreamConfig
from nats.js.errors import APIError, NotFoundError

from contracts import subjects as s

log = logging.getLogger(__name__)

MIB = 1024 * 1024
DUPLICATE_WINDOW = 120.0
K8S_HISTORY = 16


class ProvisionError(RuntimeError):
    """A stream or bucket could not be brought to its desired configuration."""


@dataclass(frozen=True)
class StreamSpec:
    """Desired settings of one stream; ``fields`` are StreamConfig attribute names."""

    name: str
    fields: dict[str, Any] = field(default_factory=dict)

    def config(self) -> StreamConfig:
        return StreamConfig(name=self.name, **self.fields)


@dataclass(frozen=True)
class BucketSpec:
    """Desired settings of one KV bucket (backed by stream ``KV_<bucket>``)."""

    bucket: str
    history: int = 1
    ttl: float | None = None

    @property
    def stream_name(self) -> str:
        return f"KV_{self.bucket}"

    def stream_fields(self) -> dict[str, Any]:
        return {"max_msgs_per_subject": self.history, "max_age": self.ttl or 0.0}


def _stream(name: str, subjects: list[str], **fields: Any) -> StreamSpec:
    base: dict[str, Any] = {
        "subjects": subjects,
        "storage": StorageType.FILE,
        "discard": DiscardPolicy.OLD,
        "duplicate_window": DUPLICATE_WINDOW,
        "num_replicas": 1,
    }
    base.update(fields)
    return StreamSpec(name, base)


def default_streams() -> list[StreamSpec]:
    p = s.PREFIX
    return [
        _stream(s.STREAM_K8S, [f"{p}.k8s.>"], max_msgs_per_subject=K8S_HISTORY),
        _stream(
            s.STREAM_IDENTITY,
            [f"{p}.identity.>", f"{p}.ipcache.>"],
            max_msgs_per_subject=K8S_HISTORY,
        ),
        _stream(
            s.STREAM_FLOWS,
            [f"{p}.flows.>"],
            max_bytes=256 * MIB,
            max_age=3600.0,
            duplicate_window=60.0,
        ),
        _stream(
            s.STREAM_ERRORS,
            [f"{p}.errors.>"],
            max_msgs_per_subject=K8S_HISTORY,
            max_bytes=64 * MIB,
            max_age=7 * 24 * 3600.0,
        ),
        _stream(s.STREAM_STATUS, [f"{p}.status.>"], max_msgs_per_subject=1),
    ]


def default_buckets() -> list[BucketSpec]:
    return [BucketSpec(s.KV_IDENTITIES, history=1), BucketSpec(s.KV_LEADER, history=1, ttl=5.0)]


def _same(current: Any, desired: Any) -> bool:
    if hasattr(desired, "value") and not hasattr(current, "value"):
        return bool(desired.value == current)
    if isinstance(desired, float) or isinstance(current, float):
        return abs(float(current or 0.0) - float(desired or 0.0)) < 1e-6
    if isinstance(desired, list) and isinstance(current, list):
        return sorted(map(str, current)) == sorted(map(str, desired))
    return bool(current == desired)


def config_diff(current: StreamConfig, desired: dict[str, Any]) -> list[str]:
    """Names of the fields in ``desired`` whose value differs in ``current`` (pure)."""
    return [k for k, v in desired.items() if not _same(getattr(current, k, None), v)]


async def ensure_stream(js: JetStreamContext, spec: StreamSpec) -> str:
    """Create or update one stream; returns "created", "updated" or "unchanged"."""
    try:
        info = await js.stream_info(spec.name)
    except NotFoundError:
        try:
            await js.add_stream(spec.config())
            log.info("created stream %s", spec.name)
            return "created"
        except APIError as exc:  # lost a creation race: fall through and compare
            if exc.err_code != 10058:  # stream name already in use
                raise ProvisionError(f"stream {spec.name}: cannot create: {exc}") from exc
            info = await js.stream_info(spec.name)
    return await _reconcile(js, spec.name, info.config, spec.fields)


async def _reconcile(
    js: JetStreamContext, name: str, current: StreamConfig, desired: dict[str, Any]
) -> str:
    changed = config_diff(current, desired)
    if not changed:
        return "unchanged"
    try:
        await js.update_stream(current.evolve(**desired))
    except APIError as exc:
        raise ProvisionError(
            f"stream {name}: cannot update field(s) {', '.join(changed)}: {exc.description}"
        ) from exc
    log.info("updated stream %s: %s", name, ", ".join(changed))
    return "updated"


async def ensure_bucket(js: JetStreamContext, spec: BucketSpec) -> str:
    """Create or update one KV bucket; returns "created", "updated" or "unchanged"."""
    try:
        info = await js.stream_info(spec.stream_name)
    except NotFoundError:
        cfg = KeyValueConfig(
            bucket=spec.bucket, history=spec.history, ttl=spec.ttl, storage=StorageType.FILE
        )
        try:
            await js.create_key_value(cfg)
            log.info("created KV bucket %s", spec.bucket)
            return "created"
        except APIError as exc:
            if exc.err_code != 10058:
                raise ProvisionError(f"KV bucket {spec.bucket}: cannot create: {exc}") from exc
            info = await js.stream_info(spec.stream_name)
    return await _reconcile(js, spec.stream_name, info.config, spec.stream_fields())


async def provision(
    js: JetStreamContext,
    streams: list[StreamSpec] | None = None,
    buckets: list[BucketSpec] | None = None,
) -> dict[str, str]:
    """Idempotently create/update every Weir stream and bucket; returns name -> outcome."""
    outcome: dict[str, str] = {}
    for spec in default_streams() if streams is None else streams:
        outcome[spec.name] = await ensure_stream(js, spec)
    for bspec in default_buckets() if buckets is None else buckets:
        outcome[bspec.stream_name] = await ensure_bucket(js, bspec)
    return outcome
