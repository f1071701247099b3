"""The statement allowlist of `tmafbench results query`, checked by a SQL parser (sqlglot).

A query may be one SELECT, WITH ... SELECT, VALUES or EXPLAIN of one of those, and nothing in it
may write, lock or act on the server: no data-modifying CTE (`WITH d AS (DELETE ...)`), no
`SELECT ... INTO`, no `FOR UPDATE`, no function with a side effect (PostgreSQL's
`pg_terminate_backend`, `pg_read_file`, `lo_export`, `dblink`..., SQLite's `load_extension`).
Everything else (`ATTACH`, `VACUUM INTO`, `COPY`, `PRAGMA`, `SET`...) is refused before the
database is touched. The connection is read-only besides (SQLite `mode=ro`; PostgreSQL read-only
transactions): this check keeps statements from doing anything at the edges of that, such as
creating the file an `ATTACH` names.
"""

from __future__ import annotations

import logging
import re

from tmafbench.errors import InputError

ALLOWED = "one SELECT, WITH ... SELECT, VALUES or EXPLAIN statement"

# Functions that act on the server or its files (PostgreSQL) or load code (SQLite), by prefix.
_SIDE_EFFECTS = ("pg_terminate_backend", "pg_cancel_backend", "pg_reload_conf", "pg_rotate_logfile", "pg_read_",
                 "pg_ls_", "pg_stat_file", "pg_file", "pg_stat_reset", "pg_advisory", "pg_try_advisory",
                 "pg_sleep", "pg_switch_wal", "pg_create_", "pg_drop_", "pg_promote", "pg_logical_", "pg_replication_",
                 "pg_backup_", "pg_start_backup", "pg_stop_backup", "pg_import_", "pg_export_", "pg_log_", "pg_wal_",
                 "lo_", "dblink", "set_config", "nextval", "setval", "txid_", "pg_notify", "query_to_xml",
                 "load_extension", "writefile", "readfile", "edit", "fts3_tokenizer",
                 "ts_stat", "ts_rewrite", "pg_stat_statements_reset", "cursor_to_xml", "table_to_xml",
                 "database_to_xml", "schema_to_xml")

_EXPLAIN = re.compile(r"^\s*explain\b(\s+query\s+plan\b|\s+analy[sz]e\b|\s+verbose\b|\s*\([^)]*\))*", re.IGNORECASE)


def check_read_only(sql: str, dialect: str) -> None:
    """Raise InputError unless `sql` is one statement the allowlist admits (`dialect`: sqlite, postgres)."""
    import sqlglot
    from sqlglot import exp
    from sqlglot.errors import ParseError

    logging.getLogger("sqlglot").setLevel(logging.ERROR)  # its "falling back to a Command" warnings: refused below
    explain = _EXPLAIN.match(sql)
    body = sql[explain.end():] if explain else sql
    try:
        statements = [s for s in sqlglot.parse(body, read=dialect) if s is not None]
    except ParseError as exc:
        raise InputError(f"refused: cannot read the query as {ALLOWED} ({str(exc).splitlines()[0]})") from None
    if len(statements) != 1:
        raise InputError(f"refused: {len(statements)} statements; a query is {ALLOWED}")
    statement = statements[0]
    while isinstance(statement, exp.Subquery):  # (SELECT ...)
        statement = statement.this
    if not isinstance(statement, (exp.Select, exp.SetOperation, exp.Values)):
        head = (body.split() or ["(empty)"])[0].upper()
        raise InputError(f"refused: {head} is not allowed; a query is {ALLOWED}")
    for node in statement.walk():
        if isinstance(node, (exp.Insert, exp.Update, exp.Delete, exp.Merge, exp.Create, exp.Drop, exp.Command,
                             exp.Copy, exp.Pragma, exp.Set, exp.Into, exp.Lock)):
            raise InputError(f"refused: the query writes, locks or runs a command ({node.key.upper()}); "
                             f"a query is {ALLOWED} that only reads")
        if isinstance(node, exp.Func):
            name = (node.name if isinstance(node, exp.Anonymous) else node.sql_name()).lower()
            if name.startswith(_SIDE_EFFECTS):
                raise InputError(f"refused: {name}() acts on the server; a query only reads")
