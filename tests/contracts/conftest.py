"""Fixture loading for contract tests: raw Kubernetes objects stored as YAML files.

Realistic objects (``<kind>-realistic*.yaml``) must convert; round-trip-style objects
(``<kind>-roundtrip.yaml``, placeholder strings in every field) must fail with a ContractError.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

FIXTURES = Path(__file__).parent / "fixtures"


def load(name: str) -> dict[str, Any]:
    data = yaml.safe_load((FIXTURES / name).read_text())
    assert isinstance(data, dict)
    return data
