"""The `tmafbench` command line. Every command parses, then calls one library function."""

from __future__ import annotations

import importlib

from tmafbench.cli.common import App

app = App(help="Benchmark trainable matrix activation functions (TMAF) against ReLU and friends.")

# Sub-modules register their commands on `app` (or add a sub-app). Each is optional while the
# package grows, so a missing one never breaks the others.
_MODULES = ("lists", "train", "bench", "study", "results", "report")


def _load_commands() -> None:
    for name in _MODULES:
        try:
            module = importlib.import_module(f"tmafbench.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"tmafbench.cli.{name}":
                continue
            raise
        module.register(app)


_load_commands()


def main() -> None:
    app()
