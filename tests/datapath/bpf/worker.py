"""A stand-in datapath worker for the restart test: load, attach, program one service, wait.

It does what a restarted worker does at start (load the programs against the pinned maps, attach
to the node's cgroup, write its desired state) and then idles until it is killed. Output: one
line ``ready`` once everything is in place.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from services.datapath.bpflayout import MapCapacities
from services.datapath.lbmap import (
    BackendValue,
    RevNatValue,
    ServiceKey,
    ServiceValue,
    derive_frontends,
)
from services.datapath.loader import SockLB

VIP, PORT, BACKENDS = "10.96.0.20", 80, ("10.244.0.11", "10.244.0.12")
SMALL = MapCapacities(
    services=1024, backends=1024, revnat=256, affinity=256, sk_revnat=1024, sk_peer=1024
)


def main(pin_root: str, cgroup: str) -> None:
    lb = SockLB(Path(pin_root), SMALL)
    lb.load()
    lb.attach(Path(cgroup))
    with lb.maps() as maps:
        maps.update_backends({i: BackendValue(ip, 8080, 6) for i, ip in enumerate(BACKENDS, 1)})
        maps.update_services(
            {ServiceKey(VIP, PORT, 6, s): ServiceValue(backend_id=s, rev_nat_id=9) for s in (1, 2)}
        )
        maps.update_revnat({9: RevNatValue(VIP, PORT)})
        maps.update_services({ServiceKey(VIP, PORT, 6): ServiceValue(count=2, rev_nat_id=9)})
        maps.update_frontends(derive_frontends(maps.dump()))  # what connect4 reads
    print("ready", flush=True)
    while True:
        time.sleep(60)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
