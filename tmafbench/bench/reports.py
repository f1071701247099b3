"""`tmafbench report benchmark`: time the rendering of a synthetic study (figures, not tests)."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RenderTiming:
    runs: int
    epochs: int
    write_s: float  # writing the synthetic database
    tables: int
    figures: int
    files: int
    render_s: float  # `build_report` alone
    summary: str  # what was written, by kind


def time_synthetic_report(activations: int = 5, ns: int = 5, seeds: int = 20, epochs: int = 20,
                          formats: tuple[str, ...] | None = None) -> RenderTiming:
    """Write a synthetic study (activations x ns x seeds runs) to a temporary SQLite file and render it."""
    from tmafbench.reports.render import build_report
    from tmafbench.store.synthetic import write_synthetic_study

    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        t0 = time.perf_counter()
        runs = write_synthetic_study(url, "synthetic", activations=activations, ns=ns, seeds=seeds, epochs=epochs)
        written = time.perf_counter() - t0
        kwargs = {} if formats is None else {"formats": formats}
        report = build_report(url, ["synthetic"], out=Path(tmp) / "report", **kwargs)
    return RenderTiming(runs, epochs, written, len(report.tables), len(report.figures), len(report.files), report.seconds,
                        report.summary())
