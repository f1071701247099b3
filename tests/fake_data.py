"""Tiny generated image data sets for tests: MNIST-style IDX files and image-folder trees.

Importable from any test (tests/ is on sys.path through tests/conftest.py); the tests pass with
these where the real MNIST and CIFAR-10 copies are absent.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
from PIL import Image

N_TRAIN, N_TEST = 40, 20


def write_idx(path: Path, array: np.ndarray) -> None:
    """uint8 array -> IDX file (magic 0x00000800 + ndim, big-endian dims), gzipped when path ends .gz."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        data = gzip.compress(data)
    path.write_bytes(data)


def make_images(n: int, channels: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 images [n, C, size, size] whose mean brightness encodes the label (learnable)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    noise = rng.integers(0, 40, size=(n, channels, size, size))
    images = noise + (labels * 20)[:, None, None, None]
    return images.astype(np.uint8), labels.astype(np.uint8)


def write_idx_set(folder: Path, gz: bool = True) -> Path:
    """MNIST-style IDX files (train 40, test 20 images of 28x28) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    for split, n, seed in (("train", N_TRAIN, 0), ("t10k", N_TEST, 1)):
        images, labels = make_images(n, 1, 28, seed)
        write_idx(folder / f"{split}-images-idx3-ubyte{ext}", images[:, 0])
        write_idx(folder / f"{split}-labels-idx1-ubyte{ext}", labels)
    return folder


def write_image_tree(root: Path, channels: int = 3, size: int = 32) -> Path:
    """root/train/<class>/*.png and root/test/<class>/*.png with 3 classes."""
    for split, n, seed in (("train", 30, 2), ("test", 12, 3)):
        images, labels = make_images(n, channels, size, seed)
        for i, (image, label) in enumerate(zip(images, labels % 3)):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            pixels = image.transpose(1, 2, 0)  # [C, H, W] -> [H, W, C]
            Image.fromarray(pixels[..., 0] if channels == 1 else pixels).save(folder / f"{i:04d}.png")
    return root
