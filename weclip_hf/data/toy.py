"""A procedural "toy world" for offline WeCLIP: images, pixel masks and image-level labels.

Each image (``TOY_IMAGE_SIZE`` px square) shows one of ``len(TOY_BACKGROUND_NAMES)`` textured
backgrounds (each family in its own range of colours, like sky or grass), clutter (line segments and
small blobs), and 1-3 objects of distinct classes that may occlude each other. A class is a shape AND a
fill-texture family (stripes, checks, dots, ...); object colours, texture period, orientation and phase,
object size, rotation and position are random, so colour alone never gives a class away while a single
patch of the object carries local evidence of its class.

Everything is deterministic from ``seed``: image ``i`` of ``generate_toy_images(n, seed)`` depends
only on ``(seed, i)``, so a longer run extends a shorter one. Ground truth ids: 0 = background,
``1..K`` = ``TOY_CLASS_NAMES[id - 1]``.
"""

from __future__ import annotations

import colorsys
import functools
import io
import multiprocessing
import pathlib
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from ..local_cores import cores_per_local_process
from ..presets import CLIP_MODEL, TOY_BACKGROUND_NAMES, TOY_CLASS_NAMES
from ..presets import TOY_PROMPT_TEMPLATE as TOY_PROMPT_TEMPLATE  # re-exported with the world

if TYPE_CHECKING:
    import datasets

TOY_IMAGE_SIZE = 96
# the validation world of seed s is generated with seed s + this offset, far from any training seed
TOY_VALIDATION_SEED_OFFSET = 1_000_003
# the class names, background words and prompt template are the toy preset's (presets.PRESETS["toy"])

# Fill texture of each class (same order as TOY_CLASS_NAMES); documentation of the world's design.
TOY_CLASS_TEXTURES = ["blotches", "checks", "stripes", "dots", "speckle", "grid", "rules", "tiles"]

_NUM_OBJECTS_PROBS = (0.0, 0.4, 0.35, 0.25)  # P(0 objects), P(1), P(2), P(3)
_MIN_VISIBLE_FRACTION = 0.6  # an earlier object keeps at least this fraction of its pixels
# Object area is about 2.6 * radius**2 pixels: 16-33% of the image, a median of 20% for a visible class,
# ~28 of the tiny CLIP's 12 x 12 patches (VOC, `voc-mini` masks: a median class covers 16% of the image,
# ~64 of the 20 x 20 patches of a 320 px crop). Radius 16-25 px (~15 patches) was too small for the patch
# grid; with 24-34 px the CAM pseudo labels of three train.py draws went from 0.432 / 0.419 / 0.416 to
# 0.492 / 0.544 / 0.499 and the fully supervised decoder from 0.623 to 0.681 (README).
_OBJECT_RADIUS = (24.0, 34.0)
# Area of each shape at unit radius, used to give every class the same area: 2.6 * radius**2.
_SHAPE_AREAS = {
    "circle": 3.14, "square": 2.89, "triangle": 1.30, "star": 1.97, "heart": 2.34, "cross": 2.20,
    "crescent": 1.67, "diamond": 1.50,
}  # fmt: skip


def toy_clip_path() -> pathlib.Path:
    """Folder of the tiny CLIP (model + tokenizer) pretrained on this world, shipped in the package."""
    return pathlib.Path(__file__).resolve().parent.parent / "toy_clip"


def check_toy_classes(class_names: list[str], model_name: str) -> None:
    """Refuse scoring or labelling the toy world (the scripts' default data) with a model of other classes: the toy
    masks' ids would silently count as that model's classes."""
    if list(class_names) != list(TOY_CLASS_NAMES):
        shown = ", ".join(class_names[:4]) + (", ..." if len(class_names) > 4 else "")
        raise ValueError(
            f"{model_name} segments other classes ({shown}) than the toy world ({', '.join(TOY_CLASS_NAMES)}), which "
            "the scripts read when no dataset is given: give its dataset (--dataset_name, --data_dir or "
            "--dataset_path)."
        )


def default_clip_model(toy: bool) -> str:
    """The CLIP a fresh model starts from unless one is given: on the toy world its tiny CLIP, else `CLIP_MODEL`."""
    return str(toy_clip_path()) if toy else CLIP_MODEL


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    return ys + 0.5, xs + 0.5


def _rotate(
    ys: np.ndarray, xs: np.ndarray, cy: float, cx: float, angle: float
) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates relative to (cy, cx) in a frame rotated by ``angle``: returns (u, v) = (along, across)."""
    dy, dx = ys - cy, xs - cx
    c, s = np.cos(angle), np.sin(angle)
    return dx * c + dy * s, -dx * s + dy * c


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, size=3).astype(np.float32)


def _periodic_bilinear(values: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bilinear interpolation of the periodic grid ``values`` [n, m] at fractional coordinates ``(a, b)``
    (arrays that broadcast together)."""
    n, m = values.shape
    ia, ib = np.floor(a).astype(np.int64), np.floor(b).astype(np.int64)
    fa, fb = a - ia, b - ib

    def at(i: np.ndarray, j: np.ndarray) -> np.ndarray:
        return values[i % n, j % m]

    near = at(ia, ib) * (1 - fa) + at(ia + 1, ib) * fa
    far = at(ia, ib + 1) * (1 - fa) + at(ia + 1, ib + 1) * fa
    return near * (1 - fb) + far * fb


def _smooth_noise(rng: np.random.Generator, size: int, cells: int, cells_x: int | None = None) -> np.ndarray:
    """Value noise in [0, 1]: a random (cells + 1) x (cells_x + 1) grid upsampled bilinearly to ``size``."""
    cells_x = cells if cells_x is None else cells_x
    coarse = rng.uniform(0, 1, size=(cells + 1, cells_x + 1)).astype(np.float32)
    rows = np.linspace(0, cells, size, dtype=np.float32)[:, None]
    cols = np.linspace(0, cells_x, size, dtype=np.float32)[None, :]
    return _periodic_bilinear(coarse, rows, cols)  # the grid's last row and column are reached, never wrapped


# ----------------------------------------------------------------------------------------------------
# Backgrounds: low-contrast textures, one family per image, each named by TOY_BACKGROUND_NAMES.


def _background_pattern(kind: str, rng: np.random.Generator, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Pattern in [0, 1] of shape [H, W] for background family ``kind``."""
    size = ys.shape[0]
    angle = rng.uniform(0, np.pi)
    if kind == "sky":  # smooth clouds
        return 0.6 * _smooth_noise(rng, size, 3) + 0.4 * _smooth_noise(rng, size, 6)
    if kind == "sand":  # fine grain on a slow variation
        return 0.5 * rng.uniform(0, 1, size=ys.shape).astype(np.float32) + 0.5 * _smooth_noise(rng, size, 4)
    if kind == "water":  # long smooth ripples
        u, v = _rotate(ys, xs, 0.0, 0.0, rng.uniform(-0.3, 0.3))
        period = rng.uniform(11, 16)
        wobble = 6.0 * _smooth_noise(rng, size, 3)
        return 0.5 + 0.5 * np.sin(2 * np.pi * (v + wobble) / period + rng.uniform(0, 2 * np.pi))
    if kind == "wall":  # large stone blocks with thin joints
        height, width = rng.uniform(14, 20), rng.uniform(22, 32)
        row = np.floor(ys / height)
        shifted = xs + (row % 2) * width / 2
        joint = (np.mod(ys, height) < 1.5) | (np.mod(shifted, width) < 1.5)
        return np.where(joint, 1.0, 0.3 * _smooth_noise(rng, size, 5)).astype(np.float32)
    if kind == "grass":  # vertical streaks: noise that varies fast across and slowly along
        return 0.75 * _smooth_noise(rng, size, 2, size // 2) + 0.25 * _smooth_noise(rng, size, 3)
    if kind == "floor":  # big tiles
        u, v = _rotate(ys, xs, 0.0, 0.0, angle)
        cell = rng.uniform(18, 28)
        tiles = (np.floor(u / cell) + np.floor(v / cell)) % 2
        return (0.8 * tiles + 0.2 * _smooth_noise(rng, size, 6)).astype(np.float32)
    raise ValueError(f"unknown background kind {kind!r}")


# Each background family has its own range of colours, as sky, sand or grass do in photos (objects keep fully
# random colours): (hue in degrees, saturation, value) ranges. With random background colours the tiny CLIP
# never learnt the background words (top-1 at chance), so WeCLIP's background prompts took no softmax mass and
# the GradCAM of one of two present classes became the complement of the other, background included.
_BACKGROUND_HSV = {
    "sky": ((195, 225), (0.25, 0.6), (0.7, 1.0)),
    "sand": ((35, 50), (0.3, 0.55), (0.7, 0.95)),
    "water": ((170, 195), (0.5, 0.8), (0.35, 0.6)),
    "wall": ((0, 360), (0.0, 0.12), (0.45, 0.85)),
    "grass": ((85, 130), (0.45, 0.8), (0.35, 0.75)),
    "floor": ((15, 30), (0.4, 0.7), (0.3, 0.6)),
}


def _background_colour(kind: str, rng: np.random.Generator) -> np.ndarray:
    """A colour [3] in 0-255 drawn from background family ``kind``'s range."""
    hue, saturation, value = (rng.uniform(*bounds) for bounds in _BACKGROUND_HSV[kind])
    return 255 * np.array(colorsys.hsv_to_rgb(hue / 360 % 1, saturation, value), dtype=np.float32)


def _render_background(rng: np.random.Generator, kind: str, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    base = _background_colour(kind, rng)
    shift = rng.normal(0, 1, size=3).astype(np.float32)
    shift *= rng.uniform(25, 55) / (np.linalg.norm(shift) + 1e-6)
    pattern = _background_pattern(kind, rng, ys, xs)[..., None]
    return base + (pattern - 0.5) * shift


def _paint_clutter(rng: np.random.Generator, image: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> None:
    """Distractors on the background: line segments and small solid blobs (never class textures)."""
    size = image.shape[0]
    density = (size / TOY_IMAGE_SIZE) ** 2
    for _ in range(int(rng.integers(2, 7) * density + 0.5)):  # line segments
        y0, x0 = rng.uniform(0, size, size=2)
        angle = rng.uniform(0, np.pi)
        length, thickness = rng.uniform(10, 45), rng.uniform(0.7, 1.6)
        u, v = _rotate(ys, xs, y0, x0, angle)
        on = (np.abs(v) < thickness) & (u > 0) & (u < length)
        image[on] = _random_colour(rng)
    for _ in range(int(rng.integers(1, 5) * density + 0.5)):  # blobs
        cy, cx = rng.uniform(0, size, size=2)
        ry, rx = rng.uniform(2.5, 7.0, size=2)
        on = ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 < 1
        image[on] = _random_colour(rng)


# ----------------------------------------------------------------------------------------------------
# Objects: class = shape + fill texture.


def _shape_mask(name: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean mask of shape ``name`` in normalised rotated coordinates (extent about [-1, 1])."""
    rho = np.sqrt(u**2 + v**2) if name in ("circle", "star", "crescent") else None
    if name == "circle":
        return rho <= 1.0
    if name == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.85
    if name == "triangle":  # equilateral, circumradius 1
        return (v <= 0.5) & (np.sqrt(3) * u - v <= 1.0) & (-np.sqrt(3) * u - v <= 1.0)
    if name == "star":  # five points
        phase = np.mod(np.arctan2(v, u) * 5 / (2 * np.pi), 1.0)
        return rho <= 0.5 + 0.55 * np.abs(phase - 0.5) * 2
    if name == "heart":
        x, y = u * 1.25, -v * 1.25 + 0.2
        return (x**2 + y**2 - 1) ** 3 - x**2 * y**3 <= 0
    if name == "cross":
        return ((np.abs(u) <= 0.33) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= 0.33) & (np.abs(u) <= 1.0))
    if name == "crescent":
        return (rho <= 1.0) & ((u - 0.5) ** 2 + v**2 > 0.75**2)
    if name == "diamond":
        return np.abs(u) / 0.75 + np.abs(v) <= 1.0
    raise ValueError(f"unknown shape {name!r}")


def _texture(kind: str, rng: np.random.Generator, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Fill pattern in {0, 1} (float) for texture family ``kind``; ``u, v`` are rotated pixel offsets.

    The families differ in what a single 8-16 px window shows: its spatial frequency (fine checks period
    ~4.5 px, thin rules ~4.3, grid ~5.5, dots ~6.5, stripes ~8, tiles ~11), 1-D vs 2-D structure, the
    dark fraction, or no periodicity at all (speckle: 2 px cells; blotches: irregular ~4 px blobs), so a
    patch carries evidence of its class whatever the object's colour or rotation. No class is a flat fill:
    three backgrounds (sky, wall, floor) are flat within a patch, and a flat `circle` spread its CAMs over
    them. Classes should not share a spatial frequency either: fine lines of period ~3.3 px had the fine
    checks' frequency and the tiny CLIP confused them (stripes and tiles still come close; see README).
    """
    phase_u, phase_v = rng.uniform(0, 100, size=2)
    u, v = u + phase_u, v + phase_v
    if kind == "blotches":  # thresholded value noise
        cell = rng.uniform(3.5, 4.5)
        noise = rng.uniform(0, 1, size=(64, 64)).astype(np.float32)
        return (_periodic_bilinear(noise, u / cell, v / cell) > 0.5).astype(np.float32)
    if kind == "checks":
        cell = rng.uniform(2.0, 2.5)
        return ((np.floor(u / cell) + np.floor(v / cell)) % 2).astype(np.float32)
    if kind == "stripes":
        period = rng.uniform(7.5, 9.0)
        return (np.mod(u, period) < period / 2).astype(np.float32)
    if kind == "dots":
        period = rng.uniform(6.0, 7.0)
        du, dv = np.mod(u, period) - period / 2, np.mod(v, period) - period / 2
        return (du**2 + dv**2 < (0.3 * period) ** 2).astype(np.float32)
    if kind == "speckle":  # random binary 2 x 2 px cells
        cells = rng.integers(0, 2, size=(64, 64)).astype(np.float32)
        return cells[np.floor(u / 2).astype(np.int64) % 64, np.floor(v / 2).astype(np.int64) % 64]
    if kind == "grid":
        period = rng.uniform(5.0, 6.0)
        return ((np.mod(u, period) < 1.3) | (np.mod(v, period) < 1.3)).astype(np.float32)
    if kind == "rules":  # thin parallel lines
        period = rng.uniform(4.0, 4.6)
        return (np.mod(u, period) < 1.4).astype(np.float32)
    if kind == "tiles":
        cell = rng.uniform(5.0, 6.0)
        return ((np.floor(u / cell) + np.floor(v / cell)) % 2).astype(np.float32)
    raise ValueError(f"unknown texture {kind!r}")


def _object_layer(
    rng: np.random.Generator,
    class_index: int,
    ys: np.ndarray,
    xs: np.ndarray,
    object_radius: tuple[float, float] = _OBJECT_RADIUS,
) -> tuple[np.ndarray, np.ndarray]:
    """One object: (mask [H, W] bool, rgb [M, 3] float of its M mask pixels) for class ``class_index`` (0-based).
    The texture and colours are computed at the mask's pixels only (elementwise: the values a whole-image
    computation would give there)."""
    size = ys.shape[0]
    radius = rng.uniform(*object_radius)
    margin = 0.6 * radius
    cy, cx = rng.uniform(margin, size - margin, size=2)
    shape_angle = rng.uniform(0, 2 * np.pi)
    stretch = rng.uniform(0.85, 1.15)
    u, v = _rotate(ys, xs, cy, cx, shape_angle)
    name = TOY_CLASS_NAMES[class_index]
    scale = radius * np.sqrt(2.6 / _SHAPE_AREAS[name])
    mask = _shape_mask(name, u / (scale * stretch), v * stretch / scale)
    tu, tv = _rotate(ys[mask], xs[mask], cy, cx, rng.uniform(0, np.pi))
    pattern = _texture(TOY_CLASS_TEXTURES[class_index], rng, tu, tv)[..., None]
    light = _random_colour(rng)
    light *= rng.uniform(170, 255) / max(float(light.max()), 1.0)  # a random hue, bright
    dark = light * rng.uniform(0.15, 0.4)  # the same hue, dark: the pattern is a luminance pattern
    rgb = light + pattern * (dark - light)
    return mask, rgb


def _render_one(
    rng: np.random.Generator,
    ys: np.ndarray,
    xs: np.ndarray,
    num_objects_probs: tuple[float, ...] = _NUM_OBJECTS_PROBS,
    object_radius: tuple[float, float] = _OBJECT_RADIUS,
) -> tuple[np.ndarray, np.ndarray, int]:
    """One image: (rgb uint8 [H, W, 3], mask uint8 [H, W], background index)."""
    num_classes = len(TOY_CLASS_NAMES)
    background = int(rng.integers(len(TOY_BACKGROUND_NAMES)))
    image = _render_background(rng, TOY_BACKGROUND_NAMES[background], ys, xs)
    _paint_clutter(rng, image, ys, xs)
    mask = np.zeros(ys.shape, dtype=np.uint8)
    num_objects = int(rng.choice(len(num_objects_probs), p=num_objects_probs))
    classes = rng.choice(num_classes, size=num_objects, replace=False)
    areas: dict[int, int] = {}
    for class_index in classes:
        class_id = int(class_index) + 1
        for _attempt in range(8):
            obj_mask, obj_rgb = _object_layer(rng, int(class_index), ys, xs, object_radius)
            covered = mask[obj_mask]
            ok = all(
                (np.count_nonzero(mask == other) - np.count_nonzero(covered == other))
                >= _MIN_VISIBLE_FRACTION * areas[other]
                for other in areas
            )
            if ok:
                break
        else:
            continue  # could not place this object without hiding another one: leave it out
        image[obj_mask] = obj_rgb
        mask[obj_mask] = class_id
        areas[class_id] = int(np.count_nonzero(obj_mask))
    noise = rng.normal(0, 4.0, size=image.shape).astype(np.float32)
    return np.clip(image + noise, 0, 255).astype(np.uint8), mask, background


def generate_toy_world(
    num_images: int,
    seed: int = 0,
    *,
    image_size: int = TOY_IMAGE_SIZE,
    num_objects_probs: tuple[float, ...] = _NUM_OBJECTS_PROBS,
    object_radius: tuple[float, float] = _OBJECT_RADIUS,
    workers: int | None = None,
) -> dict[str, np.ndarray | list[list[int]]]:
    """Images, masks, class labels and background indices of ``num_images`` toy images.

    The keyword arguments change the world (used for the small single-object "tiles" the tiny CLIP
    is also pretrained on): ``num_objects_probs[n]`` is the probability of ``n`` objects. ``workers``: processes
    that render parts of the world (None: `render_workers`; 1: this process; where processes cannot be forked,
    always this process); the world is the same for any count.

    Returns a dict with ``images`` uint8 [N, H, W, 3], ``masks`` uint8 [N, H, W] (0 = background,
    1..K = class id), ``labels`` (sorted present class ids per image) and ``backgrounds`` int64 [N]
    (index into ``TOY_BACKGROUND_NAMES``: the image-level background word).
    """
    _check_num_images(num_images)
    if len(num_objects_probs) - 1 > len(TOY_CLASS_NAMES) or not np.isclose(sum(num_objects_probs), 1.0):
        raise ValueError(
            f"num_objects_probs must be probabilities of 0..K objects, got {num_objects_probs!r}"
        )
    render = _world_renderer(seed, image_size, num_objects_probs, object_radius)
    parts = _map_ranges(render, num_images, workers)
    if len(parts) == 1:  # no copy of the whole world
        images, masks, backgrounds = parts[0]
    else:
        images, masks, backgrounds = (np.concatenate([part[i] for part in parts]) for i in range(3))
    return {"images": images, "masks": masks, "labels": _present_classes(masks), "backgrounds": backgrounds}


def _check_num_images(num_images: int) -> None:
    if not isinstance(num_images, int) or num_images < 0:
        raise ValueError(f"num_images must be a non-negative int, got {num_images!r}")


# a function of (start, stop) rendering those images of one world: (images, masks, backgrounds)
RangeRenderer = Callable[[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]]
T = TypeVar("T")


def _world_renderer(
    seed: int,
    image_size: int = TOY_IMAGE_SIZE,
    num_objects_probs: tuple[float, ...] = _NUM_OBJECTS_PROBS,
    object_radius: tuple[float, float] = _OBJECT_RADIUS,
) -> RangeRenderer:
    """`_render_range` for one world, as a picklable function of ``(start, stop)`` (for worker processes)."""
    return functools.partial(
        _render_range,
        seed=seed,
        image_size=image_size,
        num_objects_probs=num_objects_probs,
        object_radius=object_radius,
    )


def _render_range(
    start: int,
    stop: int,
    *,
    seed: int,
    image_size: int,
    num_objects_probs: tuple[float, ...],
    object_radius: tuple[float, float],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images ``start..stop-1`` of the world: (images [n, H, W, 3], masks [n, H, W], backgrounds [n])."""
    ys, xs = _grid(image_size)
    n = stop - start
    images = np.zeros((n, image_size, image_size, 3), dtype=np.uint8)
    masks = np.zeros((n, image_size, image_size), dtype=np.uint8)
    backgrounds = np.zeros(n, dtype=np.int64)
    for offset in range(n):
        rng = np.random.default_rng([seed, start + offset])
        images[offset], masks[offset], backgrounds[offset] = _render_one(
            rng, ys, xs, num_objects_probs, object_radius
        )
    return images, masks, backgrounds


def _present_classes(masks: np.ndarray) -> list[list[int]]:
    """The sorted class ids (not 0, the background) present in each mask."""
    return [sorted(int(c) for c in np.unique(m) if c != 0) for m in masks]


def toy_baselines(masks: np.ndarray, first_classes: np.ndarray, num_labels: int) -> dict[str, float]:
    """mIoU of three label-aware trivial predictions of ``masks`` [N, H, W]: all background, the whole image as
    the image's first (lowest) present class ``first_classes`` [N] (0 for none), and a centred disk of it
    (radius a quarter of the shorter side): what the weakly supervised figures are compared with."""
    from ..metrics import confusion_matrix, scores_from_confusion

    height, width = masks.shape[-2:]
    ys, xs = np.mgrid[0:height, 0:width]
    disk = (ys - height / 2) ** 2 + (xs - width / 2) ** 2 <= (min(height, width) / 4) ** 2
    first = first_classes.astype(masks.dtype)[:, None, None]
    predictions = {
        "all_background": np.zeros_like(masks),
        "whole_image_first_class": np.broadcast_to(first, masks.shape),
        "centred_disk_first_class": np.where(disk, first, 0),
    }
    return {
        name: float(scores_from_confusion(confusion_matrix(prediction, masks, num_labels))["mean_iou"])
        for name, prediction in predictions.items()
    }


def _can_fork() -> bool:
    """Whether worker processes can be forked cheaply and safely here: on Linux, outside daemonic processes (a
    DataLoader worker, which may not start children)."""
    return sys.platform == "linux" and not multiprocessing.current_process().daemon


def render_workers(num_images: int) -> int:
    """Processes `generate_toy_world` and `make_toy_dataset` render ``num_images`` with by default: 1 (this
    process) below 512 images, where starting workers does not pay, and where `_can_fork` says no; else the
    CPUs this process may run on, shared with the other processes of a distributed launch on this machine
    (``LOCAL_WORLD_SIZE``, which torchrun and accelerate set), at most 8 (BENCHMARKS.md, "The toy world's
    rendering")."""
    if num_images < 512 or not _can_fork():
        return 1
    return min(cores_per_local_process(), 8)


def _map_ranges(fn: Callable[[int, int], T], num_items: int, workers: int | None) -> list[T]:
    """``fn(start, stop)`` over consecutive ranges covering ``num_items``, in order: in this process, or in
    ``workers`` forked processes (`render_workers` when None; this process where `_can_fork` says no), a few
    ranges each."""
    if workers is None:
        workers = render_workers(num_items)
    elif not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an int >= 1, got {workers!r}")
    if workers == 1 or num_items < 2 or not _can_fork():
        return [fn(0, num_items)]
    bounds = np.linspace(0, num_items, min(4 * workers, num_items) + 1).round().astype(int).tolist()
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(min(workers, len(bounds) - 1), mp_context=context) as pool:
        return list(pool.map(fn, bounds[:-1], bounds[1:]))


def generate_toy_images(num_images: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[list[int]]]:
    """``(images uint8 [N, H, W, 3], masks uint8 [N, H, W], labels)`` of ``num_images`` toy images.

    Mask ids: 0 = background, 1..K = class id (``TOY_CLASS_NAMES[id - 1]``); ``labels[i]`` is the
    sorted list of class ids present in ``masks[i]``.
    """
    world = generate_toy_world(num_images, seed)
    return world["images"], world["masks"], world["labels"]


def make_toy_dataset(num_images: int, seed: int = 0, workers: int | None = None) -> datasets.Dataset:
    """A ``datasets.Dataset`` of toy images with columns ``image``, ``annotation`` (mode L) and ``image_labels``;
    the images rendered and encoded in ``workers`` processes (as `generate_toy_world`)."""
    import datasets
    from PIL import BmpImagePlugin  # noqa: F401  (imported here, not in each worker: `_bmp`'s encoder)

    _check_num_images(num_images)
    encode = functools.partial(_encoded_range, render=_world_renderer(seed))
    parts = _map_ranges(encode, num_images, workers)
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "annotation": datasets.Image(),
            "image_labels": datasets.List(datasets.Value("int64")),
        }
    )
    columns = {"image": [], "annotation": [], "image_labels": []}
    for part in parts:
        for name, values in zip(columns, part):
            columns[name].extend(values)
    return datasets.Dataset.from_dict(columns, features=features)


def _encoded_range(
    start: int, stop: int, *, render: RangeRenderer
) -> tuple[list[dict], list[dict], list[list[int]]]:
    """Images ``start..stop-1`` of ``render``'s world as `datasets.Image` values (BMP bytes) of the images and
    masks, and their labels."""
    images, masks, _ = render(start, stop)
    return (
        [_bmp(image, "RGB") for image in images],
        [_bmp(mask, "L") for mask in masks],
        _present_classes(masks),
    )


def _bmp(array: np.ndarray, mode: str) -> dict[str, bytes | None]:
    """A `datasets.Image` value of ``array``: BMP bytes, lossless and ~30x faster to encode than the PNG
    `datasets` would write (~7 s less per 4,200 images)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="BMP")
    return {"bytes": buffer.getvalue(), "path": None}
