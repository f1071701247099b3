"""All reads and writes of the tmaf_* tables, each in one short transaction.

`Repository` joins three concerns, each in its own module:
- `store/studies.py`: study lifecycle (create with cells, load, redesign, document, delete);
- `store/queue.py`: the run queue (claim, heartbeat, sweep lost runs, finish, counts);
- `store/results.py`: reading results back (status, summaries, tuning outcomes).

Only the store writes SQL; the scheduler and the CLI call these methods, and the reports read
through `tmafbench/reports/frames.py` on a read-only connection.
"""

from __future__ import annotations

from tmafbench.store.database import Database
from tmafbench.store.queue import Claim, Counts, Limits, as_utc, finite, timings
from tmafbench.store.results import ResultStore, StudySummary
from tmafbench.store.studies import StoredStudy, StudyDeleted, StudyNotFoundError

__all__ = ["Claim", "Counts", "Limits", "Repository", "StoredStudy", "StudyDeleted", "StudyNotFoundError", "StudySummary",
           "as_utc", "finite", "timings"]


class Repository(ResultStore):
    """The results store behind one Database (ResultStore joins StudyStore and RunQueue)."""

    def __init__(self, db: Database):
        self.db = db
