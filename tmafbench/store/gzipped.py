"""gzip-compressed SQLite files: write one reproducibly, and read one as if it were plain.

A report folder ships its results database compressed (store/ship.py). The read commands
(`report build`, `results query`, `results export`) take such a file as it is:
`--storage sqlite:///reports/X/results.db.gz`.
"""

from __future__ import annotations

import atexit
import gzip
import shutil
import tempfile
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from tmafbench.errors import TmafbenchError


def gzip_file(path: Path, out: Path) -> None:
    """Compress `path` to `out` with no time stamp: the same database gives the same bytes."""
    with open(path, "rb") as raw, open(out, "wb") as file, \
            gzip.GzipFile(filename=Path(path).name, mode="wb", fileobj=file, compresslevel=9, mtime=0) as packed:
        shutil.copyfileobj(raw, packed)


_unpacked: dict[Path, Path] = {}  # compressed file -> its uncompressed copy, once per process


def readable_copy(url: str) -> str:
    """`url` itself, or for `sqlite:///.../X.db.gz` the URL of an uncompressed copy in a temporary
    folder (removed when the process ends)."""
    try:
        parsed = make_url(url)
    except ArgumentError:  # not a URL: the engine's own check says so
        return url
    if parsed.get_backend_name() != "sqlite" or parsed.database is None or not parsed.database.endswith(".gz"):
        return url
    packed = Path(parsed.database).expanduser().resolve()
    if not packed.is_file():
        raise TmafbenchError(f"no results database at {packed}")
    if packed not in _unpacked:
        folder = Path(tempfile.mkdtemp(prefix="tmafbench-shipped-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        target = folder / packed.name.removesuffix(".gz")
        try:
            with gzip.open(packed, "rb") as file, open(target, "wb") as out:
                shutil.copyfileobj(file, out)
        except (OSError, EOFError) as exc:
            raise TmafbenchError(f"{packed} is not a gzip-compressed database: {exc}") from None
        _unpacked[packed] = target
    return f"sqlite:///{_unpacked[packed]}"
