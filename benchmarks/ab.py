# Copyright 2026 The chill-jax Authors. SPDX-License-Identifier: Apache-2.0
"""A/B timing of kernel variants in one GPU session.

Each variant is a directory laid out like the repository root, holding a
copy of ``kernels/`` and, where the variant changes the binding or the
tuned tables too, of ``chill_jax/`` (for example ``git archive <ref>
kernels chill_jax | tar -x -C variants/<name>``, kept untracked and not
ignored, so it travels with the working tree). For each round, every
variant in turn is copied over those packages (their ``*.py`` and
``*.json`` files) and ``bench.py`` runs in a fresh process (the editable
install imports the copied files); the checkout's own files are the
variant ``current`` and are restored at the end, also on failure. The
rounds alternate the variants so that a drift of the GPU's state hits them
alike; the table at the end gives each case's milliseconds per round, per
variant.

Usage::

    python benchmarks/ab.py --variant exact=variants/exact --rounds 2 --out-dir $OUT \\
        -- --shapes S1 --masks causal chunkwise_128_2 --impls chill_jax --reps 20
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("kernels", "chill_jax")


def _copy_py(source: str, dest: str) -> None:
    """Copies the package's sources (``*.py``) and data (``*.json``, the
    tuned tables), subdirectories included, from ``source`` to ``dest``."""
    for folder, dirs, files in os.walk(source):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        target = os.path.join(dest, os.path.relpath(folder, source))
        for name in files:
            if name.endswith((".py", ".json")):
                os.makedirs(target, exist_ok=True)
                shutil.copy(os.path.join(folder, name), os.path.join(target, name))


def _install(variant: str) -> None:
    """Copies the variant's packages (those it has) over the checkout's."""
    for package in PACKAGES:
        if os.path.isdir(os.path.join(variant, package)):
            _copy_py(os.path.join(variant, package), os.path.join(ROOT, package))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    bench_args = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=DIR",
                        help="a directory with copies of kernels/ (and chill_jax/) (repeatable)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out-dir", default=os.environ.get("OUT", "."))
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per bench.py run")
    args = parser.parse_args(own)
    variants = {}
    for item in args.variant:
        name, sep, path = item.partition("=")
        if not sep or not os.path.isfile(os.path.join(path, "kernels", "forward.py")):
            parser.error(f"--variant {item!r}: expected NAME=DIR with DIR/kernels/ a copy of kernels/")
        variants[name] = path
    if "current" in variants:
        parser.error("'current' names the kernels/ already in place")
    saved = tempfile.mkdtemp(prefix="ab-current-")
    for package in PACKAGES:
        os.makedirs(os.path.join(saved, package))
        _copy_py(os.path.join(ROOT, package), os.path.join(saved, package))
    _install_from = dict(current=saved, **variants)
    ms: dict[tuple, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    try:
        for round_ in range(1, args.rounds + 1):
            for name, source in _install_from.items():
                _install(source)
                out = os.path.join(args.out_dir, f"ab_{name}_{round_}.csv")
                cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "bench.py"), "--out", out, *bench_args]
                try:
                    with open(out.replace(".csv", ".log"), "w") as log:
                        subprocess.run(cmd, check=False, timeout=args.timeout, stdout=log,
                                       stderr=subprocess.STDOUT)
                except subprocess.TimeoutExpired:
                    print(f"# {name} round {round_}: timed out after {args.timeout:.0f} s", flush=True)
                if os.path.exists(out):
                    with open(out) as f:
                        rows = list(csv.DictReader(f))
                    for row in rows:
                        key = (row["impl"], row["mask"], f'{row["B"]}x{row["N"]}x{row["T"]}x{row["D"]}', row["pass"])
                        ms[key][name].append(row["ms"] or "-")
    finally:
        _install(saved)
        shutil.rmtree(saved, ignore_errors=True)
    names = list(_install_from)
    print("impl,mask,shape,pass," + ",".join(names))
    for key, per in ms.items():
        print(",".join(key) + "," + ",".join("/".join(per.get(n, [])) for n in names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
