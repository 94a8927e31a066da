"""Raw API object -> :class:`~services.watcher.state.Observation`, via the contracts, never raising.

Validation happens exactly once per object version, here: ``contracts.to_event`` builds the
UPSERT event (and raises :class:`ContractError` naming the field), and the observation carries
that ready event so the sink publishes what was validated. The digest hashes the normalised
*payload* only (not ``observed_at``/``producer``/``resourceVersion``), so two watchers, or one
watcher before and after a restart, agree on whether content changed. :func:`digest_of` is the
same function applied to events read back from the stream on takeover.

Anything the API sends (a non-object, missing metadata, placeholder strings in typed fields)
becomes :class:`Invalid` with the best object reference we can extract: the watcher reports and
skips it rather than dying.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from contracts.subjects import CLUSTER_SCOPED_KINDS
from contracts.v1 import ContractError, K8sEvent, Op, to_event
from services.watcher.state import Fingerprint, Invalid, ObjectKey, Observation, Valid


def digest_of(event: K8sEvent) -> str:
    """Content hash of an event's payload (empty payload hashes as the empty string)."""
    body = event.object.model_dump_json() if event.object is not None else ""
    return hashlib.sha256(body.encode()).hexdigest()


def _text(meta: Mapping[str, Any], key: str) -> str:
    value = meta.get(key)
    return value if isinstance(value, str) else ""


def object_key(kind: str, obj: Any) -> tuple[ObjectKey, str, str]:
    """Best-effort (key, uid, resourceVersion) of a raw object, even a malformed one."""
    meta = obj.get("metadata") if isinstance(obj, Mapping) else None
    meta = meta if isinstance(meta, Mapping) else {}
    namespace = None if kind in CLUSTER_SCOPED_KINDS else (_text(meta, "namespace") or None)
    key = ObjectKey(kind, namespace, _text(meta, "name"))
    return key, _text(meta, "uid"), _text(meta, "resourceVersion")


def make_normaliser(
    producer: str, clock: Callable[[], datetime] | None = None
) -> Callable[[str, Any], Observation]:
    """A normaliser stamping events with ``producer`` and the observation time."""
    now = clock or (lambda: datetime.now(UTC))

    def normalise(kind: str, obj: Any) -> Observation:
        key, uid, rv = object_key(kind, obj)
        if not isinstance(obj, Mapping):
            return Invalid(key, uid, rv, "", f"expected a JSON object, got {type(obj).__name__}")
        try:
            event = to_event(kind, Op.UPSERT, obj, producer, now())
        except ContractError as exc:
            return Invalid(key, uid, rv, exc.field, exc.message)
        # the key the event will be published under (the contracts own the namespace rule)
        valid_key = ObjectKey(kind, event.namespace, event.name)
        return Valid(
            valid_key, Fingerprint(event.uid, event.resource_version, digest_of(event)), event
        )

    return normalise
