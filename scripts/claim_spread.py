#!/usr/bin/env python
"""Measure how much a notebook's run results move: re-run it with other seeds, collect every claim.

    .venv/bin/python scripts/claim_spread.py book/training.ipynb --seeds 0 1 2 3 4 --jobs 2
    .venv/bin/python scripts/claim_spread.py book/limits.ipynb --seeds 0 1 --perturbed --out /tmp/x.md

A notebook with results of a run states each claim about them with `retnet_mini.claims.claim` and has
one cell tagged `parameters` that sets `SEED = 0` (the papermill convention). For every seed asked,
this script executes a copy of the notebook (nothing is written back) with a cell right after the
`parameters` cell that sets `SEED` and switches the claims to record-only, collects every claim's
value, and prints one table: each claim with its bound, the smallest and largest value over the runs,
the margin left to the bound, and whether it held in every run. That table is how the book's bounds are
chosen (see book/checks.md): wide enough for every seed and every numeric environment measured, narrow
enough that a model that does not learn breaks them.

`--perturbed` runs in the stand-in for "another CPU" that CI also uses (`ATEN_CPU_CAPABILITY=default`,
scalar kernels, and `MKL_CBWR=COMPATIBLE`); `--threads N` limits the kernel to N threads; `--env K=V`
sets anything else. Runs go `--jobs` at a time, each in its own kernel. A notebook whose results of a run
are timings only has no `SEED`: `--timings` re-runs it unchanged, and the "seeds" just number the runs.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parent.parent
PERTURBED_ENV = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE"}


def parameters_cell_index(nb, required: bool = True) -> int | None:
    """Index of the one code cell tagged `parameters`; it must assign SEED.

    A notebook whose run results are timings only has none (`required=False`): its runs differ without it.
    """
    found = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])]
    if not found and not required:
        return None
    if len(found) != 1:
        raise SystemExit(f"expected exactly one code cell tagged 'parameters', found {len(found)} "
                         f"(a notebook of timings only: pass --timings)")
    if "SEED =" not in nb.cells[found[0]].source:
        raise SystemExit("the 'parameters' cell must assign SEED")
    return found[0]


def run_once(notebook: Path, seed: int, out: Path) -> None:
    """Execute a copy of `notebook` with SEED = seed and write its recorded claims to `out` (JSON)."""
    import nbformat

    sys.path.insert(0, str(ROOT / "scripts"))
    from regen_notebooks import _Client  # the same kernel client as the regeneration script

    nb = nbformat.read(notebook, as_version=4)
    at = parameters_cell_index(nb, required=False)
    setup = "import retnet_mini.claims\nretnet_mini.claims.record_only()"
    if at is None:        # timings only: the same notebook again, recording its claims from the start
        nb.cells.insert(0, nbformat.v4.new_code_cell(setup))
    else:
        nb.cells.insert(at + 1, nbformat.v4.new_code_cell(f"SEED = {seed}\n{setup}"))
    nb.cells.append(nbformat.v4.new_code_cell(
        "import json, retnet_mini.claims\n"
        f"open({str(out)!r}, 'w').write(json.dumps(retnet_mini.claims.recorded()))"))
    start = time.perf_counter()
    _Client(nb, timeout=1800, kernel_name="python3", record_timing=False,
            resources={"metadata": {"path": str(notebook.parent)}}).execute()
    claims = json.loads(out.read_text())
    out.write_text(json.dumps({"seed": seed, "seconds": time.perf_counter() - start, "claims": claims}))


def keyed(claims: List[dict]) -> Dict[str, dict]:
    """Claims by statement (a statement checked twice gets '#2', '#3', ...)."""
    out, seen = {}, {}
    for c in claims:
        n = seen[c["statement"]] = seen.get(c["statement"], 0) + 1
        out[c["statement"] + (f" #{n}" if n > 1 else "")] = c
    return out


def table(runs: List[dict], label: str) -> str:
    """Markdown: one row per claim, over all runs (values and bounds formatted as the claims print them)."""
    from retnet_mini.claims import format_bound, format_value

    by_run = [keyed(r["claims"]) for r in runs]
    names = list(dict.fromkeys(name for k in by_run for name in k))
    seeds = ", ".join(str(r["seed"]) for r in runs)
    lines = [f"{label}: seeds {seeds}; "
             f"{min(r['seconds'] for r in runs):.0f}-{max(r['seconds'] for r in runs):.0f} s per run", "",
             "| claim | bound | min | max | margin | held |", "| --- | --- | --- | --- | --- | --- |"]
    for name in names:
        present = [k[name] for k in by_run if name in k]
        values = [c["value"] for c in present]
        lo, hi = present[0]["at_least"], present[0]["at_most"]
        margins = [m for m in ((min(values) - lo) if lo is not None else None,
                               (hi - max(values)) if hi is not None else None) if m is not None]
        held = sum(c["holds"] for c in present)
        shown = name.replace("|", "\\|")      # a pipe in a statement would split the markdown cell
        lines.append(f"| {shown} | {format_bound(lo, hi)} | {format_value(min(values))} | {format_value(max(values))} "
                     f"| {format_value(min(margins))} "
                     f"| {held}/{len(present)}{'' if len(present) == len(runs) else ' (not in every run)'} |")
    return "\n".join(lines)


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebook", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (each a kernel)")
    parser.add_argument("--perturbed", action="store_true", help="scalar ATen kernels and MKL_CBWR=COMPATIBLE")
    parser.add_argument("--threads", type=int, help="OMP/MKL threads of each kernel")
    parser.add_argument("--env", action="append", default=[], metavar="K=V", help="more environment variables")
    parser.add_argument("--out", type=Path, help="also write the table (markdown) here")
    parser.add_argument("--json", type=Path, help="also write every run's claims (JSON) here")
    parser.add_argument("--timings", action="store_true",
                        help="the notebook's run results are timings: no SEED to set, the 'seeds' only number the runs")
    parser.add_argument("--worker", nargs=2, metavar=("SEED", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    notebook = args.notebook.resolve()
    if args.worker:
        run_once(notebook, int(args.worker[0]), Path(args.worker[1]))
        return 0
    import nbformat

    parameters_cell_index(nbformat.read(notebook, as_version=4), required=not args.timings)   # fail early
    env = dict(os.environ)
    label = [notebook.name]
    if args.perturbed:
        env.update(PERTURBED_ENV)
        label.append(" ".join(f"{k}={v}" for k, v in PERTURBED_ENV.items()))
    if args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
        label.append(f"{args.threads} thread(s)")
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--env expects KEY=VALUE, got {item!r}")
        env[key] = value
        label.append(item)
    runs, pending = [], list(args.seeds)
    with tempfile.TemporaryDirectory() as tmp:
        active = []
        while pending or active:
            while pending and len(active) < args.jobs:
                seed = pending.pop(0)
                out = Path(tmp) / f"seed{seed}.json"
                cmd = [sys.executable, __file__, str(notebook), "--worker", str(seed), str(out)]
                active.append((seed, out, subprocess.Popen(cmd, env=env)))
            time.sleep(1)
            for item in [a for a in active if a[2].poll() is not None]:
                active.remove(item)
                seed, out, proc = item
                if proc.returncode != 0:
                    raise SystemExit(f"seed {seed}: the notebook failed to run (exit {proc.returncode})")
                runs.append(json.loads(out.read_text()))
                print(f"seed {seed}: {len(runs[-1]['claims'])} claims in {runs[-1]['seconds']:.0f} s", flush=True)
    runs.sort(key=lambda r: r["seed"])
    text = table(runs, "; ".join(label))
    print("\n" + text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"label": "; ".join(label), "runs": runs}, indent=1) + "\n")
    return 0 if all(c["holds"] for r in runs for c in r["claims"]) else 1


if __name__ == "__main__":
    sys.exit(main())
