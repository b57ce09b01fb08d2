# Copyright 2026 The chill-jax Authors. SPDX-License-Identifier: Apache-2.0
"""Markdown table and PNG plot from a ``bench.py`` CSV.

For every (mask, shape, pass) row the table gives each implementation's
TFLOP/s and chill-jax's ratio to the best peer measured in the same CSV.

Usage: ``python benchmarks/report.py results/h100.csv`` writes
``results/h100.md`` and ``results/h100.png``.
"""

from __future__ import annotations

import csv
import sys
from collections import defaultdict
from pathlib import Path

PEERS = ("cudnn", "xla", "pallas", "flex")


def main(path: str) -> int:
    rows = list(csv.DictReader(open(path)))
    impls = [i for i in ("chill_jax", *PEERS) if any(r["impl"] == i for r in rows)]
    cells: dict[tuple, dict[str, str]] = defaultdict(dict)
    for r in rows:
        key = (r["mask"], f'{r["B"]}x{r["N"]}x{r["T"]}x{r["D"]}', r["pass"])
        cells[key][r["impl"]] = r["tflops"] if r["tflops"] else ("refused" if r["note"] else "")
    lines = ["| mask | B x N x T x D | pass | " + " | ".join(impls) + " | chill_jax / best peer |",
             "|" + "---|" * (len(impls) + 4)]
    labels, ours, best = [], [], []
    for key, vals in cells.items():
        peer = [float(vals[p]) for p in PEERS if vals.get(p, "").replace(".", "", 1).isdigit()]
        mine = float(vals["chill_jax"]) if vals.get("chill_jax", "").replace(".", "", 1).isdigit() else None
        ratio = f"{mine / max(peer):.2f}x" if peer and mine else "–"
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | " + " | ".join(vals.get(i, "–") or "–" for i in impls)
                     + f" | {ratio} |")
        name = key[0].replace("_", "\n", 1).replace("_", ",")
        t, d = key[1].split("x")[2:]
        labels.append(f"{name}\nT{t} D{d}\n{key[2]}")
        ours.append(mine or 0.0)
        best.append(max(peer) if peer else 0.0)
    out = Path(path).with_suffix("")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(6, len(labels) * 1.1), 4))
    ax = fig.add_subplot()
    xs = range(len(labels))
    ax.bar([x - 0.2 for x in xs], ours, width=0.4, label="chill_jax")
    ax.bar([x + 0.2 for x in xs], best, width=0.4, label="best peer")
    ax.set_xticks(list(xs), labels, fontsize=7)
    ax.set_ylabel("effective TFLOP/s")
    ax.set_title(Path(path).stem)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=110)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
