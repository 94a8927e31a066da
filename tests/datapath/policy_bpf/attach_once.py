"""Load the policy programs, attach them to one interface in a netns, and exit.

Run as a separate process by test_lifecycle.py: whatever still enforces policy after this
process is gone is held by the tc filter and the pinned maps, not by a loader.
Usage: attach_once.py PIN_ROOT NETNS IFNAME
"""

from __future__ import annotations

import sys
from pathlib import Path

from services.datapath.policyloader import PolicyLoader
from tests.datapath.policy_bpf.conftest import SMALL


def main(pin_root: str, netns: str, ifname: str) -> None:
    loader = PolicyLoader(Path(pin_root), SMALL)
    loader.load()
    ifindex = loader.attach(ifname, netns)
    print(f"attached {ifindex}", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
