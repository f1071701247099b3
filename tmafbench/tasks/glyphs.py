"""Generated image classification: the digits 0-9 drawn from fonts, under random jitter (not MNIST).

The quickstart's image cells use these tasks so that it runs offline, with nothing downloaded and
no data set in the repository. They are generated, and say so: printed digit glyphs, not
handwriting, and not comparable with MNIST or CIFAR-10 numbers.

- `glyphs`: 1x28x28 grey images (MNIST's shape): a white digit on black, with noise.
- `glyphs-color`: 3x32x32 colour images (CIFAR-10's shape): a tinted digit, lighter than a dark
  background or darker than a light one, on a coloured, textured background (random gratings and a
  colour gradient), with noise. Harder than `glyphs`: a small CNN needs some 100 steps to leave chance.

How a sample is made, all in torch on the CPU from the trial seed's generator:
1. The 10 digits are rendered once per process from the DejaVu and STIX faces matplotlib ships
   (`mpl-data/fonts/ttf`, 12 faces used), each centred in a 64x64 mask.
2. Each sample picks a digit (its label), a face and a stroke width, and a random affine map
   (rotation up to 15 degrees, scale 0.8-1.1, aspect, shear, translation) resamples the mask
   (`grid_sample`).
   Each face is kept in 3 stroke widths (thickened by 3x3 max pools) and blurred once, so that
   sampling at the target size is close to anti-aliased.
3. Noise: Gaussian with a random level per image (grey), or the texture and noise (colour).

The training set of seed s is drawn from seed s (block by block, so sample i does not depend on
`train_size`); the test set is drawn from a fixed seed, the same for every trial seed, like the
other generated tasks. Images are uint8, as MNIST's and CIFAR-10's are.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from tmafbench.errors import TmafbenchError
from tmafbench.registries import TASKS
from tmafbench.tasks.base import STREAM_TEST, STREAM_TRAIN, TEST_SEED, TaskData, check_size, rng
from tmafbench.tasks.vision import ImageTask

# Faces with distinct digit shapes (sans, serif, mono; upright, bold, slanted).
FACES = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
         "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf",
         "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf", "STIXGeneral.ttf", "STIXGeneralBol.ttf")
MASK = 64  # side of the rendered glyph masks (pixels)
BLOCK = 1024  # samples drawn from one generator: sample i is the same whatever the set's size


STROKES = 3  # stroke widths per glyph: as drawn, then thickened once and twice


@functools.lru_cache(maxsize=1)
def glyph_masks() -> torch.Tensor:
    """The digits of every face and stroke width as float masks in [0, 1]: [faces x STROKES, 10, MASK, MASK].

    Thickened by a 3x3 max pool per step; each mask is then blurred by a 3x3 box, so that sampling it
    at the target size (about 2.3x smaller) is close to anti-aliased.
    """
    from PIL import Image, ImageDraw, ImageFont

    folder = _font_folder()
    masks = []
    for face in FACES:
        font = ImageFont.truetype(str(folder / face), size=int(MASK * 0.8))
        per_digit = []
        for digit in "0123456789":
            image = Image.new("L", (MASK, MASK), 0)
            draw = ImageDraw.Draw(image)
            left, top, right, bottom = draw.textbbox((0, 0), digit, font=font)
            draw.text(((MASK - (right - left)) / 2 - left, (MASK - (bottom - top)) / 2 - top), digit, fill=255,
                      font=font)
            per_digit.append(torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(MASK, MASK))
        masks.append(torch.stack(per_digit))
    drawn = torch.stack(masks).float().div_(255.0)  # [faces, 10, MASK, MASK]
    widths = [drawn]
    for _ in range(STROKES - 1):
        widths.append(F.max_pool2d(widths[-1], 3, stride=1, padding=1))
    stacked = torch.cat(widths)  # [faces x STROKES, 10, MASK, MASK]
    return F.avg_pool2d(stacked, 3, stride=1, padding=1, count_include_pad=False)


def _font_folder() -> Path:
    """matplotlib's bundled TrueType fonts (found without importing matplotlib)."""
    spec = importlib.util.find_spec("matplotlib")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        folder = Path(location) / "mpl-data" / "fonts" / "ttf"
        if all((folder / face).is_file() for face in FACES):
            return folder
    raise TmafbenchError("the glyph tasks draw their digits with the fonts matplotlib ships, and none were found: "
                         "pip install matplotlib")


def _affine(n: int, g: torch.Generator) -> torch.Tensor:
    """n random affine maps [n, 2, 3] from output to mask coordinates (`affine_grid`'s convention)."""
    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=g)

    angle = uniform(-15, 15) * math.pi / 180
    scale = uniform(0.8, 1.1)
    aspect = uniform(0.85, 1.15)
    shear = uniform(-0.25, 0.25)
    shift = torch.stack([uniform(-0.12, 0.12), uniform(-0.12, 0.12)], dim=1)  # [n, 2]
    cos, sin = torch.cos(angle), torch.sin(angle)
    rotate = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)  # [n, 2, 2]
    stretch = torch.zeros(n, 2, 2)
    stretch[:, 0, 0], stretch[:, 0, 1], stretch[:, 1, 1] = scale * aspect, shear * scale, scale / aspect
    forward = rotate @ stretch  # the digit as drawn: mask -> image
    return torch.cat([torch.linalg.inv(forward), -shift[:, :, None]], dim=2)  # image -> mask


def _strokes(masks: torch.Tensor, labels: torch.Tensor, styles: torch.Tensor, size: int,
             g: torch.Generator) -> torch.Tensor:
    """Each sample's digit (its face and stroke width: `styles`), jittered: float [n, 1, size, size] in [0, 1]."""
    n = labels.shape[0]
    source = masks[styles, labels][:, None]  # [n, 1, MASK, MASK]
    grid = F.affine_grid(_affine(n, g), [n, 1, size, size], align_corners=False)
    return F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _grey(strokes: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """White digits on black with Gaussian noise of a random level: float [n, 1, H, W] in [0, 1]."""
    n = strokes.shape[0]
    level = 0.02 + 0.13 * torch.rand(n, 1, 1, 1, generator=g)
    contrast = 0.6 + 0.4 * torch.rand(n, 1, 1, 1, generator=g)
    return strokes * contrast + level * torch.randn(strokes.shape, generator=g)


def _colour(strokes: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A coloured digit over a textured, coloured background: float [n, 3, H, W] in [0, 1]."""
    n, _, h, w = strokes.shape
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")  # [H, W]
    background = torch.rand(n, 3, 1, 1, generator=g) * 0.8 + 0.1
    slope = (torch.rand(n, 3, 2, generator=g) - 0.5) * 0.6  # a colour gradient across the image
    background = background + slope[..., 0, None, None] * xs + slope[..., 1, None, None] * ys
    for _ in range(2):  # two gratings of random frequency, orientation, phase and colour
        angle = torch.rand(n, 1, 1, 1, generator=g) * math.pi
        freq = 1 + 4 * torch.rand(n, 1, 1, 1, generator=g)
        phase = torch.rand(n, 1, 1, 1, generator=g) * 2 * math.pi
        amplitude = torch.rand(n, 3, 1, 1, generator=g) * 0.15
        background = background + amplitude * torch.sin(freq * (torch.cos(angle) * xs + torch.sin(angle) * ys) * math.pi
                                                        + phase)
    # The digit is lighter than a dark background or darker than a light one, by 0.35 to 0.65 on every
    # channel, and tinted: shape, not colour, tells the digits apart.
    mean = background.mean(dim=(1, 2, 3), keepdim=True)  # [n, 1, 1, 1]
    sign = torch.where(mean < 0.5, 1.0, -1.0)
    offset = sign * (0.35 + 0.3 * torch.rand(n, 1, 1, 1, generator=g)) + 0.15 * (torch.rand(n, 3, 1, 1, generator=g) - 0.5)
    ink = (background.mean(dim=(2, 3), keepdim=True) + offset).clamp(0, 1)
    image = background * (1 - strokes) + ink * strokes
    return image + 0.05 * torch.rand(n, 1, 1, 1, generator=g) * torch.randn(image.shape, generator=g)


def generate(count: int, seed: int, stream: int, size: int, colour: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` samples: uint8 images [count, C, size, size] and int64 labels [count]."""
    masks = glyph_masks()
    images, labels = [], []
    for block in range(math.ceil(count / BLOCK)):
        # A whole block is always drawn (then cut), so that sample i is the same for any `count`.
        g = rng(seed * 7919 + block, stream)
        n = min(BLOCK, count - block * BLOCK)
        label = torch.randint(0, 10, (BLOCK,), generator=g)
        style = torch.randint(0, masks.shape[0], (BLOCK,), generator=g)
        strokes = _strokes(masks, label, style, size, g)
        image = _colour(strokes, g) if colour else _grey(strokes, g)
        images.append((image[:n].clamp(0, 1) * 255).round().to(torch.uint8))
        labels.append(label[:n])
    return torch.cat(images), torch.cat(labels)


class GlyphTask(ImageTask):
    """Generated digit glyphs (see the module docstring); subclasses fix the image shape and colour."""

    colour = False

    def __init__(self, train_size: int = 10_000, test_size: int = 2_000):
        self.train_size = check_size("train_size", train_size)
        self.test_size = check_size("test_size", test_size)

    def load(self, seed: int) -> TaskData:
        size = self.input_shape[-1]
        x_train, y_train = _cached(self.train_size, int(seed), STREAM_TRAIN, size, self.colour)
        x_test, y_test = _cached(self.test_size, TEST_SEED, STREAM_TEST, size, self.colour)
        return TaskData(x_train, y_train, x_test, y_test)


@functools.lru_cache(maxsize=8)
def _cached(count: int, seed: int, stream: int, size: int, colour: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """`generate`, once per process for each set (a worker runs many cells on the same test set)."""
    return generate(count, seed, stream, size, colour)


@TASKS.register("glyphs")
class Glyphs(GlyphTask):
    """Generated digits 0-9 (fonts under random jitter and noise), 28x28 grey: offline, not MNIST."""

    name = "glyphs"
    input_shape = (1, 28, 28)
    # Measured over the first 20,000 test images (tests/tasks/test_glyphs.py checks they stay near).
    mean, std = (0.142,), (0.254,)


@TASKS.register("glyphs-color")
class GlyphsColor(GlyphTask):
    """Generated digits 0-9 on textured colour backgrounds, 3x32x32: offline, not CIFAR-10."""

    name = "glyphs-color"
    input_shape = (3, 32, 32)
    colour = True
    mean, std = (0.498, 0.502, 0.501), (0.285, 0.284, 0.284)  # measured as for glyphs
