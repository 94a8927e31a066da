"""Errors of the contracts: one exception type that names the object and the offending field.

Every consumer of raw Kubernetes data (watcher, API stand-in, tests) must be able to turn bad
input into a log line and a ``weir.v1.errors.*`` report instead of crashing, so conversion raises
exactly one type, :class:`ContractError` (a ``ValueError``), whose attributes say *which* object
and *which* field (the dotted Kubernetes path such as ``spec.ports[0].port``).

:class:`FieldIssue` is the internal bridge from cross-field validators to that field path: a
model validator raises it with a location relative to the model, pydantic keeps the exception
instance in the error context, and the converter appends that location to the model's path.
"""

from __future__ import annotations


class ContractError(ValueError):
    """A Kubernetes object (or message) that does not satisfy the Weir v1 contract."""

    def __init__(
        self,
        kind: str,
        namespace: str | None,
        name: str | None,
        field: str,
        message: str,
    ) -> None:
        self.kind = kind
        self.namespace = namespace
        self.name = name
        self.field = field
        self.message = message
        super().__init__(str(self))

    @property
    def object_ref(self) -> str:
        name = self.name or "<unnamed>"
        return f"{self.namespace}/{name}" if self.namespace else name

    def __str__(self) -> str:
        where = f"{self.field}: " if self.field else ""
        return f"{self.kind} {self.object_ref}: {where}{self.message}"

    def __reduce__(
        self,
    ) -> tuple[type[ContractError], tuple[str, str | None, str | None, str, str]]:
        return (type(self), (self.kind, self.namespace, self.name, self.field, self.message))


class FieldIssue(ValueError):
    """Raised inside validators: ``message`` about the sub-field at ``loc`` (relative path)."""

    def __init__(self, message: str, *loc: str | int) -> None:
        self.message = message
        self.loc: tuple[str | int, ...] = loc
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
        # str() names the sub-field too, for callers that validate models directly.
        super().__init__(f"{where}: {message}" if where else message)
