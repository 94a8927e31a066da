"""What machine a benchmark ran on: every result file and table carries this.

``save`` is here too because writing a result file and naming the machine it came from is the
one ending every benchmark shares; keeping it in one place keeps the files' format alike.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any


def describe() -> dict[str, str]:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_kib = 0
    try:
        with open("/proc/meminfo") as f:
            mem_kib = int(f.readline().split()[1])
    except (OSError, ValueError, IndexError):
        pass
    iptables = subprocess.run(
        ["iptables", "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "kernel": platform.release(),
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "memory_gib": f"{mem_kib / 1024 / 1024:.1f}",
        "python": platform.python_version(),
        "iptables": iptables,
    }


def save(out: str | Path, payload: Any) -> Path:
    """Write ``payload`` as indented JSON to ``out`` (parents created) and print the machine."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str))
    print(f"\nmachine: {describe()}\nresults: {path}")
    return path
