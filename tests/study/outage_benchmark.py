"""What a database outage costs a study: the quickstart on PostgreSQL, with and without an outage.

Runs `studies/quickstart.toml` with two CPU workers through the tests' TCP proxy, each run in a
fresh scratch database, alternately without and with an outage of `--outage` seconds (cut once the
first `--after` cells are done). Prints the wall times and the median time lost, as JSON. A figure,
never a test: the machine is shared and noisy.

    TMAFBENCH_DATA=/work/shared/data PYTHONPATH=$PWD python tests/study/outage_benchmark.py \\
        --storage postgresql://postgres@127.0.0.1:55432/tmafbench_test --outage 5 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the proxy helper

from tcp_proxy import TcpProxy  # noqa: E402

from tmafbench.store.database import Database  # noqa: E402
from tmafbench.store.repository import Repository  # noqa: E402
from tmafbench.store.scratch import scratch_database  # noqa: E402
from tmafbench.study.design import load_design  # noqa: E402
from tmafbench.study.lifecycle import prepare  # noqa: E402
from tmafbench.study.worker import WorkerOptions  # noqa: E402
from tmafbench.study.local import run_local  # noqa: E402

QUICKSTART = Path(__file__).resolve().parents[2] / "studies" / "quickstart.toml"


def completed(url: str, study_id: int, info) -> int:
    db = Database(url)
    try:
        return Repository(db).counts(study_id, info.limits).completed
    finally:
        db.dispose()


def one_run(base_url: str, outage_s: float, after: int, workers: int) -> dict:
    with scratch_database(base_url) as url:
        proxy, through = TcpProxy.to(url)
        try:
            info = prepare(load_design(QUICKSTART), through)
            cut = proxy.cut_for(outage_s, when=lambda: completed(url, info.id, info) >= after) if outage_s else None
            start = time.perf_counter()
            outcome = run_local(info, through, ["cpu"] * workers, WorkerOptions())
            wall = time.perf_counter() - start
            if cut is not None:
                cut.join()
        finally:
            proxy.close()
    assert outcome.done and outcome.counts.completed == outcome.counts.total, outcome.counts
    return {"outage_s": outage_s, "wall_s": round(wall, 2), "cuts": proxy.cuts,
            "db_wait_s": [round(w.db_wait_s, 2) for w in outcome.workers],
            "reconnects": [w.reconnects for w in outcome.workers]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", required=True, help="PostgreSQL server URL (scratch databases are made on it)")
    parser.add_argument("--outage", type=float, default=5.0)
    parser.add_argument("--after", type=int, default=6, help="cut once this many cells are done")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    runs = []
    for _ in range(args.repeats):  # alternate, so that a change in the machine's load hits both
        for outage in (0.0, args.outage):
            runs.append(one_run(args.storage, outage, args.after, args.workers))
            print(json.dumps(runs[-1]), file=sys.stderr)
    base = statistics.median(r["wall_s"] for r in runs if not r["outage_s"])
    hit = statistics.median(r["wall_s"] for r in runs if r["outage_s"])
    print(json.dumps({"outage_s": args.outage, "median_wall_without_s": base, "median_wall_with_s": hit,
                      "lost_s": round(hit - base, 2), "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
