"""The `tmafbench` command line. Every command parses, then calls one library function."""

from __future__ import annotations

import os

import typer

from tmafbench.cli import bench, lists, report, results, study, train
from tmafbench.cli.common import DEBUG_ENV, App

app = App(help="Benchmark trainable matrix activation functions (TMAF) against ReLU and friends.")


@app.callback()
def options(debug: bool = typer.Option(False, "--debug", help="Show the traceback of an unexpected error (a bug).")) -> None:
    """Benchmark trainable matrix activation functions (TMAF) against ReLU and friends."""
    if debug:
        os.environ[DEBUG_ENV] = "1"

# Each module registers its commands (or sub-app); `tmafbench --help` lists them in this order.
for _module in (lists, train, bench, study, results, report):
    _module.register(app)


def main() -> None:
    # Reproducible matrix products whatever the thread count (MLP cells then give the same bits with
    # any --workers); measured free on an MNIST MLP epoch. Set before torch loads MKL; a user's own
    # value wins. Worker processes inherit it.
    os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
    # Threads that wait for work sleep instead of spinning. On busy cores a spinning OpenMP thread
    # holds the CPU that the thread it waits for needs: measured here, a sine-sum MLP epoch with 2
    # threads beside 2 busy processes took 1.9x (TMAF) and 4.7x (tri-diagonal) its 1-thread time
    # with spinning waits and 0.7x and 0.5x with PASSIVE (reports/benchmarks/README.md). Read when
    # libgomp loads, so it is set before torch is imported; a user's own value wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    app()
