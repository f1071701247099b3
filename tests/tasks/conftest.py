"""Tiny generated image data sets: IDX files (gzipped), an image-folder tree, and a .tar.gz of it."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from fake_data import write_idx_set, write_image_tree
from tmafbench.tasks import vision


@pytest.fixture(autouse=True)
def fresh_cache(tmp_path, monkeypatch):
    """Each test gets its own decode cache and no in-process cache from other tests."""
    monkeypatch.setenv("TMAFBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("TMAFBENCH_DATA", raising=False)
    vision.load_splits.cache_clear()
    yield
    vision.load_splits.cache_clear()


@pytest.fixture
def idx_dir(tmp_path) -> Path:
    """tmp/data/MNIST/raw/*-ubyte.gz (torchvision's layout)."""
    write_idx_set(tmp_path / "data" / "MNIST" / "raw")
    return tmp_path / "data"


@pytest.fixture
def tree_dir(tmp_path) -> Path:
    return write_image_tree(tmp_path / "tree")


@pytest.fixture
def tar_dir(tmp_path) -> Path:
    """tmp/tardata/cifar10/tiny.tar.gz holding train/ and test/ at the archive root."""
    tree = write_image_tree(tmp_path / "src")
    out = tmp_path / "tardata" / "cifar10"
    out.mkdir(parents=True)
    with tarfile.open(out / "tiny.tar.gz", "w:gz") as tar:
        for split in ("train", "test"):
            tar.add(tree / split, arcname=split)
    return tmp_path / "tardata"
