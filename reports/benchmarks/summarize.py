"""Print the ratios of reports/benchmarks/*.json as ranges over the runs (what README.md quotes).

    python reports/benchmarks/summarize.py [FOLDER]

Reads only the JSON files run.sh writes; every figure is a ratio of medians measured in the same
run (interleaved), and a range is the smallest and largest over the repeated runs.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path


def load(folder: Path, pattern: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob(pattern)) if p.stat().st_size]


def span(values: list[float]) -> str:
    values = sorted(values)
    return f"{values[0]:.2f}" if len(values) == 1 or f"{values[0]:.2f}" == f"{values[-1]:.2f}" else \
        f"{values[0]:.2f}-{values[-1]:.2f}"


def label(row: dict) -> str:
    extra = "".join(f" {k}={v}" for k, v in row.get("params", {}).items())
    return f"{row['name']}{extra} {row['grid'] or ''}".strip()


def activation_ratios(runs: list[dict], pairs: list[tuple[str, str]], title: str) -> None:
    """For each shape: each (numerator, denominator) label pair's ratio of medians, per run."""
    print(f"\n{title} ({len(runs)} run(s); loads {[round(r['machine']['load_average'][0], 1) for r in runs]})")
    found: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for run in runs:
        medians = {(r["shape"], label(r), r.get("load", 0)): r["median_ms"] for r in run["rows"]}
        for (shape, name, load), value in medians.items():
            for top, bottom in pairs:
                if name == top and (shape, bottom, load) in medians:
                    found[(shape, f"{top} / {bottom}" + (f" (load {load})" if load else ""), "")].append(
                        value / medians[(shape, bottom, load)])
        for r in run["rows"]:
            found[(r["shape"], label(r) + " / relu" + (f" (load {r['load']})" if r.get("load") else ""), "")].append(r["vs_relu"])
            found[(r["shape"], label(r) + " / prelu" + (f" (load {r['load']})" if r.get("load") else ""), "")].append(r["vs_prelu"])
            if r.get("vs_unloaded"):
                found[(r["shape"], label(r) + f" loaded {r['load']} / unloaded", "")].append(r["vs_unloaded"])
    for (shape, what, _), values in sorted(found.items()):
        print(f"  {shape:14s} {what:60s} {span(values)}")


def epoch_ratios(runs: list[dict], title: str) -> None:
    """Per run: each row's ratio to the first row, 2 threads against 1 (alone, and beside the busy
    processes of --under-load), trainable breakpoints against the same fixed grid."""
    print(f"\n{title} ({len(runs)} run(s))")
    found: dict[str, list[float]] = defaultdict(list)
    for run in runs:
        rows = run["rows"]
        by = {(r["activation"], r["threads"], r.get("load", 0)): r["median_s"] for r in rows}
        for r in rows:
            beside = f", beside {r['load']} busy" if r.get("load") else ""
            found[f"{r['activation']} ({r['threads']} thr{beside}) / first row"].append(r["ratio"])
            if r["threads"] != 1 and (r["activation"], 1, 0) in by:
                found[f"{r['activation']}: {r['threads']} threads{beside} / 1 thread alone"].append(
                    r["median_s"] / by[(r["activation"], 1, 0)])
            if r.get("load") and (r["activation"], r["threads"], 0) in by:
                found[f"{r['activation']} ({r['threads']} thr): beside {r['load']} busy / alone"].append(
                    r["median_s"] / by[(r["activation"], r["threads"], 0)])
        fixed = {a.replace(",train_breakpoints=true", ""): a for a, _, _ in by if a.endswith(",train_breakpoints=true")}
        for plain, trained in fixed.items():
            for t in {t for _, t, _ in by}:
                if (plain, t, 0) in by and (trained, t, 0) in by:
                    found[f"{trained} / {plain} ({t} thr)"].append(by[(trained, t, 0)] / by[(plain, t, 0)])
    for what, values in sorted(found.items()):
        print(f"  {what:70s} {span(values)}")


SHAPES = ("20000x20", "256x512", "128x64x32x32")


def _row(run: dict, name: str, shape: str, grid: str | None = None, **params: object) -> dict | None:
    return next((r for r in run["rows"] if r["name"] == name and r["shape"] == shape and not r.get("load")
                 and (grid is None or r["grid"] == grid) and r.get("params", {}) == params), None)


def _target_line(what: str, top: dict | None, bottom: dict | None, target: float, load: list[float]) -> None:
    """One target: the ratio of wall-clock medians and of CPU-time medians (the process's own CPU
    seconds per call, which other processes on the cores disturb far less), against the target."""
    if top is None or bottom is None:
        print(f"  {what:58s} not measured")
        return
    wall = top["median_ms"] / bottom["median_ms"]
    cpu = top["cpu_ms"] / bottom["cpu_ms"] if top.get("cpu_ms") and bottom.get("cpu_ms") else None
    cpu_text = f"{cpu:5.2f}" if cpu is not None else "    -"
    met = "met" if wall <= target else ("met on CPU time" if cpu is not None and cpu <= target else "NOT met")
    print(f"  {what:58s} wall {wall:5.2f}  cpu {cpu_text}  target <= {target:<4}  {met}  (load {load[0]:.1f})")


def _files(folder: Path, pattern: str) -> list[Path]:
    return [p for p in sorted(folder.glob(pattern)) if p.stat().st_size]  # a run still writing is empty


def targets(folder: Path) -> None:
    """The issue's table: each target row from the one run that measured it."""
    grid10 = "[-5,5]/10"
    for path in _files(folder, "activations-kernel-run*.json"):
        run = json.loads(path.read_text())
        load = run["machine"]["load_average"]
        print(f"\ntargets from {path.name} (load average at its end {[round(x, 1) for x in load]})")
        for shape, target in zip(SHAPES, (2.0, 2.5, 1.3)):
            _target_line(f"TMAF / ReLU, {shape}", _row(run, "tmaf", shape, grid10), _row(run, "relu", shape), target, load)
        for shape in SHAPES:
            _target_line(f"tri-diagonal / diagonal, {shape}", _row(run, "tmaf-tridiag", shape, grid10),
                         _row(run, "tmaf", shape, grid10), 1.5, load)
        _target_line("tri-diagonal / PReLU, 256x512", _row(run, "tmaf-tridiag", "256x512", grid10),
                     _row(run, "prelu", "256x512"), 1.0, load)
        for grid in (grid10, "[-5,5]/100"):
            for shape in SHAPES:
                _target_line(f"trainable breakpoints / fixed {grid}, {shape}",
                             _row(run, "tmaf", shape, grid, train_breakpoints=True), _row(run, "tmaf", shape, grid), 2.0, load)
    for path in _files(folder, "activations-family-*.json"):
        run = json.loads(path.read_text())
        load = run["machine"]["load_average"]
        print(f"\ntargets from {path.name} (TMAFBENCH_COMPILE={run['machine'].get('tmafbench_compile')}, "
              f"load {[round(x, 1) for x in load]})")
        for name in ("pau", "apl", "kan-spline"):
            for shape in SHAPES:
                top = _row(run, name, shape)
                if top is not None:
                    _target_line(f"{name} / PReLU, {shape} (first call {top['first_ms']:.0f} ms)", top,
                                 _row(run, "prelu", shape), 3.0, load)
    for path in _files(folder, "epoch-*-run*.json"):
        run = json.loads(path.read_text())
        by = {r["activation"]: r["median_s"] for r in run["rows"] if r["threads"] == 1 and not r.get("load")}
        print(f"\ntargets from {path.name} (epoch, 1 thread, load {[round(x, 1) for x in run['machine']['load_average']]})")
        for intervals in (10, 100):
            fixed, trained = f"tmaf:intervals={intervals}", f"tmaf:intervals={intervals},train_breakpoints=true"
            if fixed in by and trained in by:
                ratio = by[trained] / by[fixed]
                print(f"  {'trainable breakpoints / fixed grid, ' + str(intervals) + ' intervals':58s} wall {ratio:5.2f}"
                      f"  target <= 2     {'met' if ratio <= 2 else 'NOT met'}; / ReLU {by[trained] / by['relu']:.2f}")


def main() -> None:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent
    targets(folder)
    kernel = load(folder, "activations-kernel-run*.json")
    if kernel:
        activation_ratios(kernel, [("tmaf-tridiag [-5,5]/10", "tmaf [-5,5]/10"), ("tmaf-tridiag [-5,5]/100", "tmaf [-5,5]/100"),
                                   ("tmaf train_breakpoints=True [-5,5]/10", "tmaf [-5,5]/10"),
                                   ("tmaf train_breakpoints=True [-5,5]/100", "tmaf [-5,5]/100"),
                                   ("tmaf-tridiag train_breakpoints=True [-5,5]/10", "tmaf-tridiag [-5,5]/10"),
                                   ("tmaf-tridiag train_breakpoints=True [-5,5]/100", "tmaf-tridiag [-5,5]/100")],
                          "TMAF kernels, 1 thread")
    for pattern, title in [("activations-family-eager-run*.json", "family, eager"),
                           ("activations-family-compiled-run*.json", "family, TMAFBENCH_COMPILE=auto"),
                           ("activations-family-spline-compiled.json", "KAN spline, TMAFBENCH_COMPILE=on"),
                           ("malloc-fresh-pages-run*.json", "[20000, 20], every call on fresh pages"),
                           ("malloc-reused-pages-run*.json", "[20000, 20], pages reused"),
                           ("under-load-activations-active.json", "2 threads, OMP_WAIT_POLICY=ACTIVE"),
                           ("under-load-activations-passive.json", "2 threads, OMP_WAIT_POLICY=PASSIVE")]:
        runs = load(folder, pattern)
        if runs:
            activation_ratios(runs, [("tmaf-tridiag [-5,5]/10", "tmaf [-5,5]/10")], title)
            if "family" in pattern or "spline" in pattern:
                for run in runs:
                    print("   first call ms:", {f"{r['name']} {r['shape']}": round(r["first_ms"]) for r in run["rows"]
                                                if r["name"] != "prelu"})
    for pattern in ("epoch-*-run1.json", "under-load-epoch-*.json"):
        for path in _files(folder, pattern):
            stem = path.name.replace("-run1.json", "-run*.json") if "run1" in path.name else path.name
            epoch_ratios(load(folder, stem), stem)
    for run in load(folder, "pack.json"):
        print("\nbench pack (cells per hour)")
        for f in run if isinstance(run, list) else []:
            vmap = f"{f['packed_vs_vmap']:.2f}x faster than vmap" if f["vmap_s"] else f"vmap: {f['vmap_error']}"
            print(f"  {f['setting']:10s} {f['activation']:6s} packed {f['speedup']:.1f}x one at a time; {vmap}")


if __name__ == "__main__":
    main()
