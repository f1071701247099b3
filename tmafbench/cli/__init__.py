"""The `tmafbench` command line. Every command parses, then calls one library function."""

from __future__ import annotations

from tmafbench.cli import bench, lists, report, results, study, train
from tmafbench.cli.common import App

app = App(help="Benchmark trainable matrix activation functions (TMAF) against ReLU and friends.")

# Each module registers its commands (or sub-app). `bench` comes after `train` and `study`,
# which hang their own sub-commands on its `bench_app`.
for _module in (lists, train, bench, study, results, report):
    _module.register(app)


def main() -> None:
    app()
