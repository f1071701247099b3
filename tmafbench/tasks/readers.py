"""Readers for offline image data: IDX files, image-folder trees and .tar.gz archives of them.

All readers return uint8 tensors `images [N, C, H, W]` and int64 `labels [N]`.
"""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tmafbench.errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
IDX_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
Split = tuple[torch.Tensor, torch.Tensor]


# --- IDX (torchvision's MNIST/raw layout) -----------------------------------------------------

def find_idx(folder: Path) -> dict[str, tuple[Path, Path]] | None:
    """The four IDX files (plain or .gz) in `folder`, by split; None when any is missing."""
    found = {}
    for split, names in IDX_NAMES.items():
        paths = [_first_existing(folder / name, folder / f"{name}.gz") for name in names]
        if None in paths:
            return None
        found[split] = tuple(paths)
    return found


def _first_existing(*paths: Path) -> Path | None:
    return next((p for p in paths if p.is_file()), None)


def read_idx(path: Path) -> np.ndarray:
    """One IDX file (magic 0x0000 08 <ndim>, big-endian int32 dims, uint8 data) as an array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    if len(data) < 4 or data[0:2] != b"\x00\x00" or data[2] != 0x08:
        raise InputError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    dims = np.frombuffer(data, dtype=">i4", count=ndim, offset=4)
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise InputError(f"{path}: IDX header says {tuple(dims)} but holds {body.size} values")
    return body.reshape(tuple(int(d) for d in dims))


def read_idx_split(images: Path, labels: Path) -> Split:
    x = torch.from_numpy(read_idx(images).copy())  # [N, H, W]
    y = torch.from_numpy(read_idx(labels).astype(np.int64))
    if x.shape[0] != y.shape[0]:
        raise InputError(f"{images} has {x.shape[0]} images but {labels} has {y.shape[0]} labels")
    return x[:, None], y  # [N, 1, H, W]


# --- image-folder trees: <root>/train/<class>/*.png|jpg, <root>/test/<class>/* -----------------

def is_image_tree(folder: Path) -> bool:
    return (folder / "train").is_dir() and (folder / "test").is_dir()


def read_image_tree(root: Path, channels: int) -> tuple[Split, Split, list[str]]:
    """Decode train/ and test/ of a tree; classes are the sorted sub-folders of train/."""
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    splits = []
    for split in ("train", "test"):
        items = [
            (path.read_bytes(), label)
            for label, name in enumerate(classes)
            for path in sorted((root / split / name).glob("*"))
            if path.suffix.lower() in IMAGE_SUFFIXES
        ]
        splits.append(_decode(items, channels, f"{root / split}"))
    return splits[0], splits[1], classes


def read_image_tar(archive: Path, channels: int) -> tuple[Split, Split, list[str]]:
    """Decode an image-folder tree straight from a .tar(.gz), reading each member once."""
    members: dict[str, list[tuple[str, str, bytes]]] = {"train": [], "test": []}
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:
            parts = Path(member.name).parts
            if not member.isfile() or Path(member.name).suffix.lower() not in IMAGE_SUFFIXES or len(parts) < 3:
                continue
            split, label = parts[-3], parts[-2]  # .../<split>/<class>/<file>
            if split in members:
                members[split].append((label, member.name, tar.extractfile(member).read()))
    classes = sorted({label for label, _, _ in members["train"]})
    if not classes or not members["test"]:
        raise InputError(f"{archive}: no train/<class>/ and test/<class>/ images inside")
    index = {name: i for i, name in enumerate(classes)}
    splits = []
    for split in ("train", "test"):
        items = [(data, index[label]) for label, _, data in sorted(members[split]) if label in index]
        splits.append(_decode(items, channels, f"{archive}:{split}"))
    return splits[0], splits[1], classes


def _decode(items: list[tuple[bytes, int]], channels: int, where: str) -> Split:
    if not items:
        raise InputError(f"{where}: no images found")
    mode = "L" if channels == 1 else "RGB"
    images = [np.asarray(Image.open(io.BytesIO(data)).convert(mode)) for data, _ in items]  # [H, W] or [H, W, 3]
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise InputError(f"{where}: images have different sizes {sorted(shapes)[:3]}")
    stacked = torch.from_numpy(np.stack(images))  # [N, H, W(, C)]
    stacked = stacked[:, None] if channels == 1 else stacked.permute(0, 3, 1, 2)
    return stacked.contiguous(), torch.tensor([label for _, label in items], dtype=torch.int64)


# --- decoded-tensor cache for archives ------------------------------------------------------

def cache_dir() -> Path:
    """TMAFBENCH_CACHE, else ~/.cache/tmafbench."""
    return Path(os.environ.get("TMAFBENCH_CACHE") or Path.home() / ".cache" / "tmafbench")


def cached_image_tar(archive: Path, channels: int) -> tuple[Split, Split, list[str]]:
    """read_image_tar, with the decoded uint8 tensors cached as .pt keyed by size + mtime.

    Decoding 60k JPEGs takes tens of seconds; loading the cached tensors takes well under one.
    """
    stat = archive.stat()
    key = f"{archive.name.split('.')[0]}-{stat.st_size}-{stat.st_mtime_ns}-c{channels}.pt"
    path = cache_dir() / key
    if path.is_file():
        blob = torch.load(path, weights_only=True)
        return (blob["x_train"], blob["y_train"]), (blob["x_test"], blob["y_test"]), list(blob["classes"])
    (x_tr, y_tr), (x_te, y_te), classes = read_image_tar(archive, channels)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # write then rename: concurrent workers never see half a file
    torch.save({"x_train": x_tr, "y_train": y_tr, "x_test": x_te, "y_test": y_te, "classes": classes}, tmp)
    os.replace(tmp, path)
    return (x_tr, y_tr), (x_te, y_te), classes


