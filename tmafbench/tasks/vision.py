"""Image classification tasks read from files: mnist, fashion-mnist, cifar10 (generated images: glyphs.py).

Where data comes from, first match wins:
1. `data_dir` (parameter) or TMAFBENCH_DATA: torchvision's IDX files (`MNIST/raw/*-ubyte[.gz]`,
   or the files directly in a folder), an image-folder tree `train/<class>/*`, `test/<class>/*`,
   or a `.tar.gz` of such a tree;
2. torchvision's download (when `download` is true and the machine is online) into the cache.
Otherwise a DataNotFoundError names every folder looked in.

Images stay uint8 in memory ([N, C, H, W]); `prepare` normalises a batch on the device and, for
CIFAR with `augment`, applies random crop (padding 4) and horizontal flip.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from tmafbench.errors import DataNotFoundError, InputError
from tmafbench.registries import TASKS
from tmafbench.tasks import readers
from tmafbench.tasks.base import TEST_SEED, Task, TaskData, check_size, subsample

DATA_ENV = "TMAFBENCH_DATA"
Splits = tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class ImageTask(Task):
    """Classification of uint8 images [N, C, H, W] held in memory, normalised per channel."""

    kind = "classification"
    output_size = 10
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    normalise_once = True  # False: keep uint8 on the device and normalise per batch (saves 4x memory)

    def stage(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise the whole set once when it is small enough (MNIST: 188 MB as float32)."""
        return self.normalise(x) if self.normalise_once else x

    def stage_key(self) -> object:
        return (tuple(self.mean), tuple(self.std), self.normalise_once)

    def prepare(self, x: torch.Tensor, train: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        """A staged batch -> normalised float32 [B, C, H, W] (uint8 batches are normalised here)."""
        return self.normalise(x) if x.dtype == torch.uint8 else x

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 [B, C, H, W] -> (x / 255 - mean) / std, float32, on x's device."""
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x.float().div_(255.0) - mean) / std


class VisionTask(ImageTask):
    """A real image data set read from files (or torchvision's download)."""

    channels = 1
    subfolders: tuple[str, ...] = ()  # where inside a data root this data set may live
    torchvision_name = ""

    def __init__(self, data_dir: str | None = None, train_size: int | None = None, test_size: int | None = None,
                 download: bool = True):
        self.data_dir = data_dir
        self.download = bool(download)
        self.train_size = check_size("train_size", train_size)
        self.test_size = check_size("test_size", test_size)

    def load(self, seed: int) -> TaskData:
        (x_tr, y_tr), (x_te, y_te) = load_splits(type(self), self.data_dir, self.download)
        check_size("train_size", self.train_size, x_tr.shape[0])
        check_size("test_size", self.test_size, x_te.shape[0])
        x_tr, y_tr = subsample(x_tr, y_tr, self.train_size, seed)
        x_te, y_te = subsample(x_te, y_te, self.test_size, TEST_SEED)
        return TaskData(x_tr, y_tr, x_te, y_te)

    # -- where the data lives --

    def roots(self) -> list[Path]:
        """Folders looked in, in order: data_dir, or TMAFBENCH_DATA, and their known sub-folders."""
        base = self.data_dir or os.environ.get(DATA_ENV)
        if not base:
            return []
        root = Path(base).expanduser()
        # The root itself only when the user named it: MNIST and Fashion-MNIST share file names.
        own = [root] if self.data_dir else []
        return own + [root / sub for sub in self.subfolders]

    def read_local(self, folder: Path) -> Splits | None:
        """Data from one folder, or None when it holds none of the known layouts."""
        idx = readers.find_idx(folder)
        if idx is not None:
            return readers.read_idx_split(*idx["train"]), readers.read_idx_split(*idx["test"])
        if readers.is_image_tree(folder):
            train, test, _ = readers.read_image_tree(folder, self.channels)
            return train, test
        for archive in sorted(folder.glob("*.tar.gz")) + sorted(folder.glob("*.tgz")) + sorted(folder.glob("*.tar")):
            train, test, _ = readers.cached_image_tar(archive, self.channels)
            return train, test
        return None

    def read_torchvision(self) -> Splits | None:
        """torchvision's own download into the cache folder; None when offline."""
        import torchvision.datasets as tvd

        root = readers.cache_dir() / "torchvision"
        try:
            sets = [getattr(tvd, self.torchvision_name)(str(root), train=t, download=True) for t in (True, False)]
        except (OSError, RuntimeError):  # offline (URLError is an OSError) or every mirror failed
            return None  # the caller reports where it looked
        return tuple(_from_torchvision(s, self.channels) for s in sets)  # type: ignore[return-value]


def _from_torchvision(dataset, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    data = torch.as_tensor(dataset.data)  # MNIST: [N, H, W]; CIFAR: [N, H, W, C] numpy
    x = data[:, None] if channels == 1 else data.permute(0, 3, 1, 2)
    return x.contiguous(), torch.as_tensor(dataset.targets, dtype=torch.int64)


@functools.lru_cache(maxsize=8)
def load_splits(cls: type[VisionTask], data_dir: str | None, download: bool) -> Splits:
    """Read a data set once per process (a worker running many trials reads files once)."""
    task = cls(data_dir=data_dir, download=download)
    looked = task.roots()
    for folder in looked:
        if folder.is_dir():
            found = task.read_local(folder)
            if found is not None:
                return _checked(found, cls)
    if download:
        found = task.read_torchvision()
        if found is not None:
            return _checked(found, cls)
    where = ", ".join(str(p) for p in looked) or "(no data_dir given and TMAFBENCH_DATA unset)"
    raise DataNotFoundError(
        f"{cls.name} data not found; looked in: {where}"
        + (f"; torchvision download into {readers.cache_dir() / 'torchvision'} failed (offline?)" if download else "")
        + f". Get it with torchvision.datasets.{cls.torchvision_name}(root, download=True) on a machine "
        "online, or pass data_dir=<folder> (IDX files, train/<class>/ + test/<class>/ images, or a .tar.gz of them)"
    )


def _checked(splits: Splits, cls: type[VisionTask]) -> Splits:
    for x, _ in splits:
        if tuple(x.shape[1:]) != cls.input_shape:
            raise InputError(f"{cls.name}: images have shape {tuple(x.shape[1:])}, expected {cls.input_shape}")
    return splits


@TASKS.register("mnist")
class MNIST(VisionTask):
    """MNIST digits, 28x28 grayscale, 10 classes."""

    name = "mnist"
    input_shape = (1, 28, 28)
    mean, std = (0.1307,), (0.3081,)
    subfolders = ("MNIST/raw", "mnist", "MNIST")
    torchvision_name = "MNIST"


@TASKS.register("fashion-mnist")
class FashionMNIST(VisionTask):
    """Fashion-MNIST clothes, 28x28 grayscale, 10 classes."""

    name = "fashion-mnist"
    input_shape = (1, 28, 28)
    mean, std = (0.2860,), (0.3530,)
    subfolders = ("FashionMNIST/raw", "fashion-mnist", "fashion_mnist", "FashionMNIST")
    torchvision_name = "FashionMNIST"


@TASKS.register("cifar10")
class CIFAR10(VisionTask):
    """CIFAR-10, 32x32 RGB, 10 classes; random crop + flip when augment is on."""

    name = "cifar10"
    channels = 3
    input_shape = (3, 32, 32)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    subfolders = ("cifar10", "cifar-10", "CIFAR10")
    torchvision_name = "CIFAR10"
    normalise_once = False  # 50k x 3x32x32 stays uint8 (150 MB, not 600 MB)

    def __init__(self, data_dir: str | None = None, train_size: int | None = None, test_size: int | None = None,
                 download: bool = True, augment: bool = True):
        super().__init__(data_dir=data_dir, train_size=train_size, test_size=test_size, download=download)
        self.augment = bool(augment)
        self.random_prepare = self.augment  # random crops and flips per batch: trains unpacked

    def prepare(self, x: torch.Tensor, train: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        x = super().prepare(x, train, generator)
        if train and self.augment:
            x = random_crop_flip(x, generator)
        return x


def random_crop_flip(x: torch.Tensor, generator: torch.Generator | None, pad: int = 4) -> torch.Tensor:
    """Per-sample random crop of a zero-padded batch and random horizontal flip. x [B, C, H, W]."""
    b, _, h, w = x.shape
    # Random numbers come from the CPU generator (seeded by the trial), then move to the device.
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(x.device)
    flip = (torch.rand(b, generator=generator) < 0.5).to(x.device)
    padded = F.pad(x, (pad, pad, pad, pad))  # [B, C, H+2p, W+2p]
    rows = dy[:, None] + torch.arange(h, device=x.device)  # [B, H]
    cols = dx[:, None] + torch.arange(w, device=x.device)  # [B, W]
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    batch = torch.arange(b, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # [B, H, W, C]
    return out.permute(0, 3, 1, 2).contiguous()
