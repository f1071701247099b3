"""Optuna's storage on the results database's URL: its tables live beside ours (`tmaf_*`).

Optuna is imported on first use, not at import time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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
