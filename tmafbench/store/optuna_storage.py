"""Optuna's storage on the results database's URL: its tables live beside ours (`tmaf_*`), and
`drop_trials`, which removes a redesigned study's trials in the transaction that removes its cells.

Optuna is imported on first use, not at import time.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Collection

from sqlalchemy import inspect, select
from sqlalchemy.orm import Session

from tmafbench.store.database import add_sqlite_pragmas, is_sqlite, normalize_url, postgres_engine_kwargs

if TYPE_CHECKING:
    from optuna.storages import RDBStorage


def optuna_storage(url: str) -> RDBStorage:
    """Optuna's RDB storage on the same URL; on SQLite with our pragmas (IMMEDIATE writes, WAL).

    Optuna's own INFO lines ("A new study created in RDB ...") are silenced: our commands say
    what they do themselves.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = normalize_url(url)
    if is_sqlite(url):
        storage = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
        add_sqlite_pragmas(storage.engine)
        storage.engine.dispose()  # connections opened before the listeners existed
        return storage
    return optuna.storages.RDBStorage(url, engine_kwargs=postgres_engine_kwargs(url))


def drop_trials(s: Session, optuna_study: str, keep_cells: Collection[str]) -> dict[int, int]:
    """In the caller's transaction (so that our cells and Optuna's mirror of them change together or
    not at all): delete the trials of Optuna study `optuna_study` whose cell (user attribute "cell",
    the cell's config hash) is not in `keep_cells`, with everything Optuna keeps of them.

    Optuna numbers a study's trials 0, 1, ... in creation order, and gives a new trial the count of
    the trials before it: a gap left by a deleted trial would make the next trial repeat a number
    that is taken. So the trials left are numbered again in the same order; returns {old number: new
    number} of those that changed (their runs must follow). Optuna's storage API has no way to delete
    a trial: this goes through Optuna's own SQLAlchemy models, whose cascades remove a trial's
    parameters, values, attributes, intermediate values and heartbeat with it.
    """
    from optuna.storages._rdb import models

    if not inspect(s.connection()).has_table(models.TrialModel.__tablename__):
        return {}  # Optuna's tables are made with the study's mirror: nothing mirrored yet
    study_id = s.scalar(select(models.StudyModel.study_id).where(models.StudyModel.study_name == optuna_study)
                        .with_for_update())  # PostgreSQL: Optuna locks this row to number a new trial
    if study_id is None:
        return {}
    attr = models.TrialUserAttributeModel
    cell_of = {trial_id: json.loads(value) for trial_id, value in s.execute(
        select(attr.trial_id, attr.value_json).join(models.TrialModel).where(
            models.TrialModel.study_id == study_id, attr.key == "cell"))}
    trials = s.scalars(select(models.TrialModel).where(models.TrialModel.study_id == study_id)
                       .order_by(models.TrialModel.trial_id)).all()
    kept = []
    for trial in trials:
        if trial.trial_id in cell_of and cell_of[trial.trial_id] not in keep_cells:
            s.delete(trial)
        else:
            kept.append(trial)
    s.flush()
    renumbered = {}
    for number, trial in enumerate(kept):
        if trial.number != number:
            renumbered[trial.number] = number
            trial.number = number
    s.flush()
    return renumbered
