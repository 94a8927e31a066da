"""Connect-latency client, run inside a benchmark network namespace and cgroup.

The harness starts it inside the contender's cgroup and namespace; it serves requests from the
harness on stdin, one JSON line each:
``{"targets": [[ip, port], ...], "count": N, "seed": S}`` -> ``{"ns": [t1, ...], "errors": E}``,
where each ``t`` is the wall time of one blocking ``connect()`` in nanoseconds. Targets are
picked at random with the seed ``S``: the harness gives the contenders of one chunk the same seed
(iptables and Weir connect to the same Services in the same order) and every chunk another one
(short chunks still cover the whole target list). Sockets close with SO_LINGER 0 (RST instead
of FIN) so no TIME_WAIT state builds up and distorts later connects. Keeping one long-lived
process per contender lets the harness interleave contenders every few connects.
"""

from __future__ import annotations

import json
import random
import socket
import struct
import sys
import time

LINGER_RST = struct.pack("ii", 1, 0)


def measure(targets: list[tuple[str, int]], count: int, seed: int) -> tuple[list[int], int]:
    timings: list[int] = []
    errors = 0
    rng = random.Random(seed)
    for _ in range(count):
        target = targets[rng.randrange(len(targets))]
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
        t0 = time.perf_counter_ns()
        try:
            s.connect(target)
        except OSError:
            errors += 1
            s.close()
            continue
        timings.append(time.perf_counter_ns() - t0)
        s.close()
    return timings, errors


def main() -> None:
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        targets = [(str(ip), int(port)) for ip, port in req["targets"]]
        timings, errors = measure(targets, int(req["count"]), int(req.get("seed", req["count"])))
        print(json.dumps({"ns": timings, "errors": errors}), flush=True)


if __name__ == "__main__":
    main()
