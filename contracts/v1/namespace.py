"""Namespace payload: only the labels, because namespace labels feed pod identities."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from contracts.v1.meta import Labels, Model


class Namespace(Model):
    """A core/v1 Namespace (labels only)."""

    kind: Literal["namespace"] = "namespace"
    labels: Labels = Field(default_factory=dict)
