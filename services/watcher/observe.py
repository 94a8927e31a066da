"""Raw API object -> :class:`~services.watcher.state.Observation`, via the contracts, never raising.

Validation happens exactly once per object version, here: ``contracts.to_event`` builds the
UPSERT event (and raises :class:`ContractError` naming the field), and the observation carries
that ready event so the sink publishes what was validated. Services and EndpointSlices of the
common shapes are converted by :func:`contracts.v1.convert_fast.upsert_event` instead (one strict
Rust-side schema, no Python validator per field: the watcher's CPU per object is the end-to-end
critical path); it builds the same event or declines, and a declined object takes ``to_event``.

Serialisation happens once too: the payload's JSON is hashed for the digest and spliced into the
event's JSON, which the observation carries as the bytes the sink publishes
(``K8sEvent.encoded``). The digest hashes the normalised *payload* only (not
``observed_at``/``producer``/``resourceVersion``), so two watchers, or one watcher before and
after a restart, agree on whether content changed. :func:`digest_of` is the same function applied
to events read back from the stream on takeover.

Anything the API sends (a non-object, missing metadata, placeholder strings in typed fields)
becomes :class:`Invalid` with the best object reference we can extract: the watcher reports and
skips it rather than dying.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from functools import partial
from hashlib import sha256
from typing import Any

from contracts.subjects import CLUSTER_SCOPED_KINDS
from contracts.v1 import ContractError, K8sEvent, Op, to_event
from contracts.v1.convert_fast import upsert_event
from contracts.v1.raw import is_object
from services.watcher.state import Fingerprint, Invalid, ObjectKey, Observation, Valid


def digest_of(event: K8sEvent) -> str:
    """Content hash of an event's payload (empty payload hashes as the empty string)."""
    body = event.object.model_dump_json().encode() if event.object is not None else b""
    return sha256(body).hexdigest()


def _text(meta: Mapping[str, Any], key: str) -> str:
    value = meta.get(key)
    return value if isinstance(value, str) else ""


def object_key(kind: str, obj: Any) -> tuple[ObjectKey, str, str]:
    """Best-effort (key, uid, resourceVersion) of a raw object, even a malformed one."""
    meta = obj.get("metadata") if is_object(obj) else None
    meta = meta if is_object(meta) else {}
    namespace = None if kind in CLUSTER_SCOPED_KINDS else (_text(meta, "namespace") or None)
    key = ObjectKey(kind, namespace, _text(meta, "name"))
    return key, _text(meta, "uid"), _text(meta, "resourceVersion")


def make_normaliser(
    producer: str, clock: Callable[[], datetime] | None = None
) -> Callable[[str, Any], Observation]:
    """A normaliser stamping events with ``producer`` and the observation time."""
    now = clock or partial(datetime.now, UTC)
    new = tuple.__new__  # the named tuples' own __new__ is a Python-level call per object

    def normalise(kind: str, obj: Any) -> Observation:
        if not is_object(obj):
            key, uid, rv = object_key(kind, obj)
            return Invalid(key, uid, rv, "", f"expected a JSON object, got {type(obj).__name__}")
        observed_at = now()
        # the common Service / EndpointSlice shapes without a Python validator per field; None
        # for anything else (valid or not): the contract path then decides, naming the field
        event = upsert_event(kind, obj, producer, observed_at)
        if event is None:
            try:
                event = to_event(kind, Op.UPSERT, obj, producer, observed_at)
            except ContractError as exc:
                key, uid, rv = object_key(kind, obj)  # best effort, only needed for the report
                return Invalid(key, uid, rv, exc.field, exc.message)
        # the key the event will be published under (the contracts own the namespace rule)
        valid_key = new(ObjectKey, (kind, event.namespace, event.name))
        body, data = event.encoded()  # an UPSERT always has its payload: body is never "null"
        digest = sha256(body).hexdigest()
        fingerprint = new(Fingerprint, (event.uid, event.resource_version, digest))
        return new(Valid, (valid_key, fingerprint, event, data))

    return normalise
