"""PNG plots of the benchmark results (matplotlib, headless), from bench/results/*.json.

Plots are drawn only from result files a benchmark wrote, never from numbers typed in here, so a
plot in the docs is always a picture of a run. A missing result file skips its plot with a note.

* ``datapath_latency.png``: connect() latency p50 (solid) and p99 (dashed) against the number of
  Services (log-log) for the direct floor, kube-proxy-shaped iptables and Weir;
* ``programming_cdf.png``: the distribution (CDF, log x) of network-programming latency per node
  count, with kube-proxy's full iptables-restore of the same ruleset as the anchor.

Run: ``.venv/bin/python -m bench.plots [--docs]`` (``--docs`` copies the PNGs to docs/img/).
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

RESULTS = Path("bench/results")
DOCS_IMG = Path("docs/img")
COLORS = {"direct": "tab:gray", "iptables": "tab:red", "weir": "tab:blue"}
LABELS = {"direct": "direct (floor)", "iptables": "kube-proxy iptables-nft", "weir": "Weir eBPF"}


def _load(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        print(f"[plots] {path} not found: plot skipped")
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def cdf(values: Sequence[float]) -> tuple[list[float], list[float]]:
    """Sorted values and their cumulative fractions (pure)."""
    xs = sorted(values)
    n = len(xs)
    return xs, [(i + 1) / n for i in range(n)]


def datapath_plot(data: dict[str, Any], out: Path) -> Path:
    rows = sorted(data["rows"], key=lambda r: r["services"])
    sizes = [r["services"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for c in ("direct", "iptables", "weir"):
        ax.plot(
            sizes, [r[c]["p50_us"] for r in rows], "o-", color=COLORS[c], label=f"{LABELS[c]} p50"
        )
        ax.plot(sizes, [r[c]["p99_us"] for r in rows], "x--", color=COLORS[c], alpha=0.6,
                label=f"{LABELS[c]} p99")  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("Services")
    ax.set_ylabel("connect() latency (µs)")
    ax.set_title("connect() to a ClusterIP vs number of Services")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def programming_plot(data: dict[str, Any], out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    restores: list[float] = []
    for row in data["rows"]:
        if row["latencies_ms"]:
            xs, ys = cdf(row["latencies_ms"])
            ax.step(xs, ys, where="post", label=f"Weir, {row['nodes']} node(s): all nodes")
        restores.extend(row["restores_ms"])
    if restores:
        xs, ys = cdf(restores)
        ax.step(xs, ys, where="post", color="tab:red", linestyle="--",
                label="kube-proxy: one full iptables-restore")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("API write -> in the maps of every node (ms)")
    ax.set_ylabel("fraction of changes")
    ax.set_title(f"Network-programming latency, {data['services']} Services loaded")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def make_all(results: Path = RESULTS, docs: bool = False) -> list[Path]:
    made: list[Path] = []
    if (d := _load(results / "datapath.json")) is not None:
        made.append(datapath_plot(d, results / "datapath_latency.png"))
    if (p := _load(results / "programming.json")) is not None:
        made.append(programming_plot(p, results / "programming_cdf.png"))
    if docs:
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        for png in made:
            shutil.copy(png, DOCS_IMG / png.name)
    for png in made:
        print(f"[plots] wrote {png}" + (f" (and {DOCS_IMG / png.name})" if docs else ""))
    return made


def main(argv: Sequence[str] | None = None) -> list[Path]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", default=str(RESULTS))
    p.add_argument("--docs", action="store_true", help="also copy the PNGs to docs/img/")
    args = p.parse_args(argv)
    return make_all(Path(args.results), args.docs)


if __name__ == "__main__":
    main()
