"""The environment record: CPU extensions, torch build, threads, TMAF kernel; older databases gain the column."""

from __future__ import annotations

import gzip
import json
import sqlite3
from pathlib import Path

import pytest
import torch

from tmafbench.store.database import Database
from tmafbench.store.environment import (
    EnvironmentInfo,
    collect,
    cpu_vector_flags,
    details,
    differences,
    torch_build,
)
from tmafbench.store.repository import Repository
from tmafbench.store.ship import ship_studies

X86 = "processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512_bf16 amx_tile hypervisor\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes sve bf16\nCPU implementer\t: 0x41\n"

CONFIG = """PyTorch built with:
  - GCC 13.3
  - Intel(R) oneAPI Math Kernel Library Version 2024.2-Product Build 20240605 for Intel(R) 64 architecture applications
  - Intel(R) MKL-DNN v3.12.0 (Git Hash 80afa71049cd69a3df32adcccb623b12cd7baa22)
  - CPU capability usage: AVX2
  - Build settings: BLAS_INFO=mkl, BUILD_TYPE=Release, CUDA_FLAGS= -Xfatbin -gencode arch=compute_90,code=sm_90, \
CXX_FLAGS= -O2 -fPIC -DNDEBUG, TORCH_VERSION=2.14.1, USE_MKL=ON, USE_MKLDNN=ON,
"""


def test_vector_extensions_come_from_the_cpu_flags():
    assert cpu_vector_flags(X86) == ["sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "amx_tile"]
    assert cpu_vector_flags(ARM) == ["asimd", "sve", "bf16"]
    assert cpu_vector_flags("") == []


def test_torch_build_keeps_the_versions_and_the_cpu_settings():
    build = torch_build(CONFIG)
    assert build["compiler"] == "GCC 13.3" and build["mkl"] == "2024.2-Product"
    assert build["onednn"] == "v3.12.0 80afa71049cd69a3df32adcccb623b12cd7baa22"
    assert build["cpu_capability_usage"] == "AVX2" and build["CXX_FLAGS"] == "-O2 -fPIC -DNDEBUG"
    assert build["USE_MKL"] == "ON" and build["TORCH_VERSION"] == "2.14.1" and "CUDA_FLAGS" not in build
    here = torch_build(torch.__config__.show())  # this machine's torch, as a worker records it
    assert here["TORCH_VERSION"] == torch.__version__.split("+")[0]
    if torch.backends.mkl.is_available():
        assert here["mkl"]


def test_collect_records_threads_and_the_kernel():
    info = collect("cpu", "torch")
    assert info.details["threads"] == torch.get_num_threads() and info.details["tmaf_kernel"] == "torch"
    assert info.details["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert info.env_hash() != collect("cpu", "native").env_hash()  # the kernel tells environments apart
    json.dumps(info.details)  # stored as JSON


def test_differences_name_what_can_change_the_bits():
    base = {"cpu": "Intel Xeon", "torch": "2.14.1", "details": {**details("native"), "cpu_flags": ["avx2", "avx512f"],
                                                                 "threads": 1}}
    other = {**base, "cpu": "AMD EPYC", "details": {**base["details"], "cpu_flags": ["avx2"], "threads": 2}}
    found = differences(base, other)
    assert "cpu: 'Intel Xeon' there, 'AMD EPYC' here" in found
    assert "cpu extensions: avx512f only there" in found and "threads: 1 there, 2 here" in found
    assert differences(base, base) == []
    assert "recorded no details" in differences({**base, "details": None}, other)[-1]


def _old_database(path) -> str:
    """A database as the first release made it: no `details` column, one environment row."""
    url = f"sqlite:///{path}"
    db = Database(url)
    db.create_all()
    with db.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE tmaf_environment DROP COLUMN details")
    db.dispose()
    with sqlite3.connect(path) as conn:
        conn.execute("insert into tmaf_environment (env_hash, hostname, platform, python, torch, cpu, cpu_count, packages)"
                     " values ('old', 'h', 'linux', '3.11', '2.0', 'Old CPU', 2, '{}')")
    return url


def test_an_older_database_gains_the_column_and_keeps_its_rows(tmp_path):
    url = _old_database(tmp_path / "old.db")
    db = Database(url)
    assert db.add_missing_columns() == ["tmaf_environment.details"]
    assert db.add_missing_columns() == []  # idempotent
    info = EnvironmentInfo("h", "linux", "3.11", "2.14.1", None, "New CPU", 2, None, {}, {"threads": 1})
    Repository(db).environment_id(info)
    db.dispose()
    with sqlite3.connect(tmp_path / "old.db") as conn:
        rows = conn.execute("select cpu, details from tmaf_environment order by id").fetchall()
    assert rows == [("Old CPU", None), ("New CPU", '{"threads": 1}')]


def test_a_committed_report_written_before_the_column_ships_again(tmp_path):
    # A shipped database of the first release has no `details` column: shipping it again copies what it has.
    shipped = tmp_path / "results.db.gz"
    shipped.write_bytes((Path(__file__).parents[2] / "reports" / "paper-table-3-1" / "results.db.gz").read_bytes())
    out = ship_studies(f"sqlite:///{shipped}", ["paper-table-3-1"], tmp_path / "again")
    raw = tmp_path / "again.db"
    raw.write_bytes(gzip.decompress(out.database.read_bytes()))
    with sqlite3.connect(raw) as conn:
        rows = conn.execute("select cpu, details from tmaf_environment").fetchall()
    assert rows and all(cpu and details is None for cpu, details in rows)


@pytest.fixture(autouse=True)
def _fresh_collect():
    collect.cache_clear()
    yield
    collect.cache_clear()


@pytest.mark.postgres
def test_an_older_postgres_database_gains_the_column(postgres_url):
    from tmafbench.store.scratch import scratch_database

    with scratch_database(postgres_url) as url:
        db = Database(url)
        try:
            db.create_all()
            with db.engine.begin() as conn:
                conn.exec_driver_sql("ALTER TABLE tmaf_environment DROP COLUMN details")
            assert db.add_missing_columns() == ["tmaf_environment.details"] and db.add_missing_columns() == []
            info = EnvironmentInfo("h", "linux", "3.11", "2.14.1", None, "CPU", 2, None, {}, {"threads": 2})
            Repository(db).environment_id(info)
            with db.engine.connect() as conn:
                assert conn.exec_driver_sql("select details from tmaf_environment").scalar() == {"threads": 2}
        finally:
            db.dispose()
