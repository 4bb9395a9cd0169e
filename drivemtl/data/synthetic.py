"""An embedded synthetic driving-scene data set: images, boxes, presence, depth and segmentation.

Scenes are rendered with numpy (sky, ground, haze, noise) and Pillow's polygon drawing (road,
distractors, objects), fast enough to make thousands of labelled images in seconds on one core.

Geometry. A pinhole camera (horizontal field of view ``hfov_deg``, principal point at the image
centre column and at row ``horizon * height``, zero pitch and roll) sits ``camera_height`` metres
above a flat ground plane. A pixel row ``v`` (centre ``v + 0.5``) below the horizon row ``cy`` sees
the ground at depth ``Z = f * camera_height / (v + 0.5 - cy)``. The road runs straight ahead with a
small random heading, so its edges and lane markings converge to a vanishing point on the horizon.
Every object (and distractor) is a billboard facing the camera, standing on the ground at depth
``Z`` and lateral offset ``X``: a point ``(x, y)`` metres on it (``y`` up from the ground) projects
to ``u = cx + f * (X + x) / Z``, ``v = cy + f * (camera_height - y) / Z``, so its size and foot row
follow from its distance. Objects are drawn far to near (painter's algorithm), so nearer ones
occlude farther ones.

Depth. The depth map holds the z-depth in metres: ground pixels from the formula above, each
billboard's pixels at its ``Z``. Sky and ground beyond ``max_depth`` (80 m by default, like a
LiDAR's range) are 0, the KITTI "no measurement" value, written as a uint16 PNG of metres x 256.

Segmentation. Every pixel is labelled with one of :data:`SEGMENTATION_CLASSES` (an 8-bit PNG of
indices into that list): road (asphalt), lane markings (edge lines, dashes, centre lines), roadside
(sidewalks, kerbs, terrain, distant hills, buildings, trees and every pole), sky, vehicles,
pedestrians, signs (stop-sign faces and the other sign faces) and traffic lights (housings). Each
shape is drawn into the mask with the same coordinates as into the image, so the two agree pixel
for pixel before the JPEG encoding; shadows keep the class of the ground they fall on.

Labelling rule. Only the four classes (``pedestrian``, ``car``, ``stop_sign``, ``traffic_light``)
are labelled, and every rendered instance of them is labelled: the layout is decided first, the
visibility of each instance is measured on an instance map (after occlusion by nearer objects and
distractors and clipping by the image border), and any instance that fails the rule below is removed
from the scene before anything is drawn. So no unlabelled instance of a class is ever visible (an
unlabelled pedestrian would be a false 0). An instance is kept iff:

- at least ``min_visible`` (30 %) of its silhouette's pixels are visible, and
- its visible box is at least ``min_box_frac * height`` pixels tall (14 px at 384 px, about 5 px
  after a 3x downscale) and at least a fifth of that wide.

Its box is the visible extent of its pixels, ``[x1, y1, x2, y2)`` in pixel edges (so x2 > x1),
inside the image. For stop signs and traffic lights the box covers the sign face or the light's
housing, not the pole (as in COCO and BDD100K); plain poles, other sign shapes, trees and buildings
appear as unlabelled distractors. Presence of a class is 1 iff it has a box. Each class is placed
independently with probability ``presence_prob`` so co-occurrence carries no information.

Label dropout. Per-class rates turn a class's presence into ``?`` and remove its boxes, as if the
annotator had not labelled it. Dropout draws from its own random stream (independent of rendering),
always one number per class, so it never changes the pixels and a higher rate drops a superset.

Determinism. Image ``i`` is rendered from ``SeedSequence([seed, i])``: the same seed gives
byte-identical files, image ``i`` does not depend on how many images are generated, and generation
can be split across processes.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import multiprocessing
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from drivemtl import console
from drivemtl.data.labels import DEFAULT_CLASSES, UNKNOWN_TOKEN
from drivemtl.data.manifest import write_manifest
from drivemtl.errors import DriveMTLError

GENERATOR_VERSION = 2
"""Bump whenever the same seed and config would give different files (it keys data caches)."""

RENDERABLE_CLASSES: tuple[str, ...] = ("pedestrian", "car", "stop_sign", "traffic_light")
"""The object classes the generator knows how to draw."""

SEGMENTATION_CLASSES: tuple[str, ...] = (
    "road",
    "lane_marking",
    "roadside",
    "sky",
    "vehicle",
    "pedestrian",
    "sign",
    "traffic_light",
)
"""Classes of the segmentation masks, in index order (the segmentation task's default)."""
_ROAD, _MARKING, _ROADSIDE, _SKY, _VEHICLE, _PEDESTRIAN, _SIGN, _LIGHT = range(8)
_OBJECT_REGION = {
    "car": _VEHICLE,
    "pedestrian": _PEDESTRIAN,
    "stop_sign": _SIGN,
    "traffic_light": _LIGHT,
}

MIN_WIDTH, MIN_HEIGHT = 64, 48
DEPTH_SCALE = 256.0
"""KITTI convention: PNG value = metres x 256."""

_NOISE_LEVELS = (1.0, 2.0, 3.0, 4.5)
# Cars and pedestrians can be placed out to ~55 m; skewing them nearer keeps most of them
# recognisable after the ~3x downscale used for training (signs and lights have a short range).
_NEAR_BIAS = 1.3
_NOISE_PAD = 16

Colour = tuple[int, int, int]
# A drawing primitive: ("poly", [(x, y), ...], colour) or ("rect" | "ellipse", (xa, ya, xb, yb),
# colour); in metres on a billboard (y up) before projection, in pixels (y down) after.
Part = tuple


@dataclass
class SyntheticConfig:
    """Image size, label dropout and scene knobs of the synthetic generator.

    Attributes:
        width: Image width in pixels.
        height: Image height in pixels.
        dropout: Class name -> probability that the class is ``?`` (not annotated) on an image.
        presence_prob: Probability that a class is placed in a scene (before visibility checks).
        max_instances: Most instances of one class in a scene.
        hfov_deg: Horizontal field of view of the camera.
        horizon: Horizon row as a fraction of the image height.
        camera_height: Camera height above the ground in metres.
        max_depth: Depth range in metres; ground farther than this is 0 (no measurement).
        min_box_frac: Smallest labelled box height as a fraction of the image height.
        min_visible: Smallest visible fraction of an object's silhouette for it to be kept.
        distractors: Draw buildings, trees, poles and other signs.
        noise: Add sensor noise.
        jpeg_quality: JPEG quality of the written images.
    """

    width: int = 640
    height: int = 384
    dropout: dict[str, float] = field(default_factory=dict)
    presence_prob: float = 0.55
    max_instances: int = 3
    hfov_deg: float = 60.0
    horizon: float = 0.45
    camera_height: float = 1.5
    max_depth: float = 80.0
    min_box_frac: float = 14.0 / 384.0
    min_visible: float = 0.3
    distractors: bool = True
    noise: bool = True
    jpeg_quality: int = 90

    def validate(self, classes: Sequence[str] = RENDERABLE_CLASSES) -> None:
        """Check every field; raise DriveMTLError naming the bad one."""
        if not (isinstance(self.width, int) and isinstance(self.height, int)):
            raise DriveMTLError(f"Image size must be integers, got {self.width}x{self.height}.")
        if self.width < MIN_WIDTH or self.height < MIN_HEIGHT:
            raise DriveMTLError(
                f"Synthetic image size {self.width}x{self.height} is too small; use at least "
                f"{MIN_WIDTH}x{MIN_HEIGHT} so objects stay recognisable."
            )
        if not isinstance(self.dropout, Mapping):
            raise DriveMTLError(f"dropout must map class name to rate, got {self.dropout!r}.")
        for name, rate in self.dropout.items():
            if name not in classes:
                raise DriveMTLError(
                    f"Unknown class {name!r} in dropout; known classes are {list(classes)}."
                )
            if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
                raise DriveMTLError(
                    f"Dropout rate of {name!r} is {rate!r}; use a number in [0, 1]."
                )
        checks = {
            "presence_prob": 0 <= self.presence_prob <= 1,
            "max_instances": isinstance(self.max_instances, int) and self.max_instances >= 1,
            "hfov_deg": 20 <= self.hfov_deg <= 120,
            "horizon": 0.2 <= self.horizon <= 0.7,
            "camera_height": 0.5 <= self.camera_height <= 5,
            "max_depth": 10 <= self.max_depth <= 255,
            "min_box_frac": 0 < self.min_box_frac < 0.5,
            "min_visible": 0 < self.min_visible <= 1,
            "jpeg_quality": 1 <= self.jpeg_quality <= 100,
        }
        for name, ok in checks.items():
            if not ok:
                raise DriveMTLError(f"SyntheticConfig.{name}={getattr(self, name)!r} is invalid.")


@dataclass(frozen=True)
class Camera:
    """Pinhole camera over a flat ground (pixels, metres)."""

    focal: float
    cx: float
    cy: float
    height: float
    max_depth: float

    @classmethod
    def from_config(cls, config: SyntheticConfig) -> Camera:
        """The camera of a config: focal length from the field of view, horizon from ``horizon``."""
        focal = 0.5 * config.width / math.tan(math.radians(config.hfov_deg) / 2)
        return cls(
            focal,
            config.width / 2,
            config.horizon * config.height,
            config.camera_height,
            config.max_depth,
        )

    def ground_depth_rows(self, height: int) -> np.ndarray:
        """Ground depth seen by each pixel row's centre; 0 above the horizon or past range."""
        below = np.arange(height, dtype=np.float64) + 0.5 - self.cy
        with np.errstate(divide="ignore"):
            depth = np.where(below > 0, self.focal * self.height / np.maximum(below, 1e-9), 0.0)
        depth[depth > self.max_depth] = 0.0
        return depth.astype(np.float32)


@dataclass(frozen=True)
class SceneObject:
    """A labelled object of a scene: its class, ground position and visible box."""

    class_name: str
    distance: float
    lateral: float
    box: tuple[int, int, int, int]
    visible_fraction: float


@dataclass
class Scene:
    """One rendered scene.

    Attributes:
        image: ``(H, W, 3)`` uint8 RGB.
        depth: ``(H, W)`` float32 metres, 0 = no measurement (sky, beyond range).
        segmentation: ``(H, W)`` uint8 indices into :data:`SEGMENTATION_CLASSES`.
        boxes: ``(x1, y1, x2, y2, class_name)`` of every labelled object, in pixels.
        objects: The labelled objects with their distance and lateral offset.
        camera: The camera that rendered the scene.
    """

    image: np.ndarray
    depth: np.ndarray
    segmentation: np.ndarray
    boxes: list[tuple[int, int, int, int, str]]
    objects: list[SceneObject] = field(default_factory=list)
    camera: Camera | None = None


@dataclass
class _Drawable:
    """A billboard at depth ``z``: its parts in pixels, its silhouette mask once rasterised."""

    z: float
    lateral: float
    parts: list[Part]
    label: str | None = None
    regions: list[int] = field(default_factory=list)
    shadow: list[Part] = field(default_factory=list)
    x0: int = 0
    y0: int = 0
    mask: Image.Image | None = None
    mask_np: np.ndarray | None = None
    area: int = 0


# --------------------------------------------------------------------------------------------
# Public API


def render_scene(
    rng: np.random.Generator,
    config: SyntheticConfig,
    classes: Sequence[str] = RENDERABLE_CLASSES,
) -> Scene:
    """Render one random road scene.

    Args:
        rng: The only source of randomness; seed it per image for reproducible scenes.
        config: Image size and scene knobs (``config.dropout`` is not used here).
        classes: Which object classes to draw; the others never appear.

    Returns:
        The image, its depth map, its segmentation mask and the boxes of every object drawn.
    """
    config.validate(RENDERABLE_CLASSES)
    unknown = [c for c in classes if c not in RENDERABLE_CLASSES]
    if unknown:
        raise DriveMTLError(
            f"The synthetic generator cannot draw {unknown}; it knows {list(RENDERABLE_CLASSES)}."
        )
    return _Renderer(rng, config, tuple(classes)).render()


def generate_dataset(
    out_dir: str | Path,
    num_images: int,
    seed: int = 0,
    config: SyntheticConfig | None = None,
    classes: Sequence[str] = DEFAULT_CLASSES,
    progress: bool = False,
    workers: int = 1,
) -> Path:
    """Render a data set: ``images/``, ``depth/``, ``segmentation/`` and a JSONL manifest.

    Args:
        out_dir: Output folder, created if needed; files of the same names are overwritten.
        num_images: How many images.
        seed: Non-negative seed; image ``i`` depends only on ``(seed, i)`` and the config.
        config: Size, dropout and scene knobs; defaults to ``SyntheticConfig()``.
        classes: Classes to draw and label, a subset of ``RENDERABLE_CLASSES``.
        progress: Show a progress bar.
        workers: Processes to render with; the output is identical for any number, since
            every image has its own seed.

    Returns:
        The path of ``manifest.jsonl``.

    Raises:
        DriveMTLError: For a bad argument (count, seed, size, dropout class or rate).
    """
    config = config or SyntheticConfig()
    if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
        raise DriveMTLError(f"num_images must be a positive integer, got {num_images!r}.")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DriveMTLError(f"seed must be a non-negative integer, got {seed!r}.")
    classes = tuple(classes)
    unknown = [c for c in classes if c not in RENDERABLE_CLASSES]
    if unknown or not classes:
        raise DriveMTLError(
            f"Cannot generate classes {unknown or '[]'}; choose from {list(RENDERABLE_CLASSES)}."
        )
    config.validate(classes)

    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "depth").mkdir(parents=True, exist_ok=True)
    (out_dir / "segmentation").mkdir(parents=True, exist_ok=True)
    render = functools.partial(_generate_one, out_dir, seed=seed, config=config, classes=classes)
    workers = max(1, min(int(workers), num_images))
    with contextlib.ExitStack() as stack:
        if workers == 1:
            entries = map(render, range(num_images))
        else:
            pool = stack.enter_context(multiprocessing.Pool(workers))
            entries = pool.imap(render, range(num_images), chunksize=16)  # keeps the order
        if progress:
            entries = console.progress(
                entries, total=num_images, desc="synthetic images", unit=" img"
            )
        entries = list(entries)
    return write_manifest(entries, out_dir / "manifest.jsonl")


def dropped_classes(seed: int, index: int, dropout: Mapping[str, float]) -> set[str]:
    """Classes whose labels are dropped to ``?`` on image ``index`` of the data set ``seed``.

    One uniform draw per renderable class in a fixed order, from a stream separate from the
    renderer's, so pixels never depend on the rates and a higher rate drops a superset.
    """
    draws = np.random.default_rng(np.random.SeedSequence([seed, index, 1])).random(
        len(RENDERABLE_CLASSES)
    )
    return {c for c, u in zip(RENDERABLE_CLASSES, draws) if u < dropout.get(c, 0.0)}


def encode_depth(depth: np.ndarray) -> np.ndarray:
    """Metres (0 = invalid) to the uint16 KITTI encoding, metres x 256, clipped at 255.996 m."""
    return np.clip(np.rint(depth * DEPTH_SCALE), 0, 65535).astype(np.uint16)


def png16_bytes(array: np.ndarray) -> bytes:
    """Encode a 2-D uint16 array as a 16-bit greyscale PNG.

    Pillow's 16-bit PNG path (byte swapping, adaptive filters) costs about twice as much, the
    largest single cost per image. Depth rows are constant or smooth along x, so the PNG "Sub"
    filter makes them nearly all zeros and the fastest zlib level compresses them well.
    """
    if array.ndim != 2 or array.dtype != np.uint16:
        raise ValueError(f"expected a 2-D uint16 array, got {array.dtype} {array.shape}")
    height, width = array.shape
    raw = array.astype(">u2").view(np.uint8).reshape(height, 2 * width)
    rows = np.empty((height, 2 * width + 1), dtype=np.uint8)
    rows[:, 0] = 1  # filter type Sub: each byte minus the byte one pixel (2 bytes) to the left
    rows[:, 1:3] = raw[:, :2]
    np.subtract(raw[:, 2:], raw[:, :-2], out=rows[:, 3:])  # uint8 arithmetic wraps, as PNG wants

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)  # 16-bit grey, no interlace
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows.tobytes(), 1))
        + chunk(b"IEND", b"")
    )


def _generate_one(
    out_dir: Path, index: int, seed: int, config: SyntheticConfig, classes: tuple[str, ...]
) -> dict:
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
    scene = _Renderer(rng, config, classes).render()
    name = f"{index:06d}"
    image_rel, depth_rel = f"images/{name}.jpg", f"depth/{name}.png"
    mask_rel = f"segmentation/{name}.png"
    # subsampling=2 (4:2:0) is what cameras write; pinned so output does not follow Pillow defaults.
    Image.fromarray(scene.image).save(
        out_dir / image_rel, quality=config.jpeg_quality, subsampling=2
    )
    (out_dir / depth_rel).write_bytes(png16_bytes(encode_depth(scene.depth)))
    Image.fromarray(scene.segmentation).save(out_dir / mask_rel, compress_level=1)

    dropped = dropped_classes(seed, index, config.dropout)
    presence: dict[str, int | str] = {}
    for c in classes:
        has_box = any(b[4] == c for b in scene.boxes)
        presence[c] = UNKNOWN_TOKEN if c in dropped else int(has_box)
    boxes = [list(b) for b in scene.boxes if b[4] not in dropped]
    entry = {"image": image_rel, "presence": presence, "boxes": boxes, "depth": depth_rel}
    entry["segmentation"] = mask_rel
    return entry


# --------------------------------------------------------------------------------------------
# Colours and palettes

_CAR_COLOURS = [
    (235, 235, 232),
    (20, 20, 24),
    (160, 162, 168),
    (95, 98, 104),
    (170, 25, 25),
    (30, 60, 140),
    (25, 70, 45),
    (215, 180, 40),
    (190, 170, 140),
    (110, 30, 40),
    (60, 120, 170),
]
_SKIN = [(255, 220, 190), (235, 190, 150), (200, 150, 110), (150, 100, 70), (100, 65, 45)]
_HAIR = [(20, 15, 10), (60, 40, 25), (120, 80, 40), (200, 170, 110), (140, 140, 140)]
_BUILDING = [
    (185, 170, 150),
    (150, 120, 100),
    (200, 195, 185),
    (120, 110, 105),
    (170, 90, 70),
    (210, 200, 170),
    (100, 105, 115),
]


def _jitter(rng: np.random.Generator, colour: Sequence[float], amount: float) -> Colour:
    # Mostly a brightness change, a little hue: independent channel noise turns greys purple.
    shift = rng.normal(0, amount) + rng.normal(0, 0.35 * amount, 3)
    c = np.asarray(colour, dtype=np.float64) + shift
    return tuple(int(v) for v in np.clip(c, 0, 255))


def _pick(rng: np.random.Generator, palette: Sequence[Colour], amount: float = 8.0) -> Colour:
    return _jitter(rng, palette[int(rng.integers(len(palette)))], amount)


def _random_colour(rng: np.random.Generator) -> Colour:
    """A saturated or muted clothing colour."""
    hue = rng.random()
    sat = rng.uniform(0.1, 0.9)
    val = rng.uniform(0.15, 0.95)
    i = int(hue * 6) % 6
    f = hue * 6 - int(hue * 6)
    p, q, t = val * (1 - sat), val * (1 - f * sat), val * (1 - (1 - f) * sat)
    rgb = [(val, t, p), (q, val, p), (p, val, t), (p, q, val), (t, p, val), (val, p, q)][i]
    return tuple(int(255 * c) for c in rgb)


def _shade(colour: Colour, factor: float) -> Colour:
    return tuple(int(min(255, max(0, c * factor))) for c in colour)


# --------------------------------------------------------------------------------------------
# Object and distractor builders, in metres on a billboard: x right, y up from the ground.


def _car_parts(rng: np.random.Generator) -> list[Part]:
    colour = _pick(rng, _CAR_COLOURS, 10)
    glass = _jitter(rng, (45, 55, 70), 8)
    tyre = (22, 22, 24)
    dark = _shade(colour, 0.45)
    height = rng.uniform(1.35, 1.75)
    view = rng.random()
    if view < 0.6:  # seen from behind (same direction) or the front (oncoming)
        hw = rng.uniform(0.85, 0.98)
        belt = height * rng.uniform(0.55, 0.62)
        top_hw = hw * rng.uniform(0.68, 0.78)
        front = view < 0.2
        lamp = (250, 245, 215) if front else (200, 20, 20)
        parts = [
            ("rect", (-hw + 0.08, 0.0, -hw + 0.38, 0.45), tyre),
            ("rect", (hw - 0.38, 0.0, hw - 0.08, 0.45), tyre),
            (
                "poly",
                [
                    (-hw, 0.22),
                    (hw, 0.22),
                    (hw, belt - 0.06),
                    (hw - 0.1, belt),
                    (-hw + 0.1, belt),
                    (-hw, belt - 0.06),
                ],
                colour,
            ),
            (
                "poly",
                [(-hw + 0.1, belt), (hw - 0.1, belt), (top_hw, height), (-top_hw, height)],
                colour,
            ),
            (
                "poly",
                [
                    (-hw + 0.2, belt + 0.04),
                    (hw - 0.2, belt + 0.04),
                    (top_hw - 0.07, height - 0.07),
                    (-top_hw + 0.07, height - 0.07),
                ],
                glass,
            ),
            ("rect", (-hw, 0.2, hw, 0.34), dark),
            ("rect", (-hw + 0.05, belt - 0.24, -hw + 0.4, belt - 0.08), lamp),
            ("rect", (hw - 0.4, belt - 0.24, hw - 0.05, belt - 0.08), lamp),
            ("rect", (-0.25, 0.38, 0.25, 0.5), (225, 225, 215)),
        ]
        if front:
            parts.append(("rect", (-0.42, belt - 0.24, 0.42, belt - 0.1), (30, 30, 32)))
        return parts
    # Side view, facing left or right.
    d = 1.0 if rng.random() < 0.5 else -1.0
    half = rng.uniform(1.9, 2.4)
    belt = height * rng.uniform(0.55, 0.62)
    r = rng.uniform(0.3, 0.36)
    wx = half - 0.75

    def pts(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
        return [(d * x, y) for x, y in points]

    parts = [
        (
            "poly",
            pts(
                [
                    (-half, 0.28),
                    (half, 0.28),
                    (half, belt - 0.2),
                    (half - 0.35, belt),
                    (-half + 0.1, belt),
                    (-half, belt - 0.1),
                ]
            ),
            colour,
        ),
        (
            "poly",
            pts(
                [
                    (-half + 0.35, belt),
                    (half - 1.25, belt),
                    (half - 1.9, height),
                    (-half + 0.9, height),
                ]
            ),
            colour,
        ),
        (
            "poly",
            pts(
                [
                    (-half + 0.5, belt + 0.04),
                    (-0.05, belt + 0.04),
                    (-0.05, height - 0.07),
                    (-half + 0.95, height - 0.07),
                ]
            ),
            glass,
        ),
        (
            "poly",
            pts(
                [
                    (0.05, belt + 0.04),
                    (half - 1.38, belt + 0.04),
                    (half - 1.93, height - 0.07),
                    (0.05, height - 0.07),
                ]
            ),
            glass,
        ),
        ("rect", (d * (half - 0.12), belt - 0.22, d * half, belt - 0.1), (240, 230, 200)),
    ]
    for cx in (-wx, wx):
        parts.append(("ellipse", (cx - r, 0.0, cx + r, 2 * r), tyre))
        parts.append(("ellipse", (cx - r / 2, r / 2, cx + r / 2, 1.5 * r), (150, 150, 155)))
    return parts


def _pedestrian_parts(rng: np.random.Generator) -> list[Part]:
    s = rng.uniform(1.55, 1.9) / 1.75
    skin = _pick(rng, _SKIN, 6)
    hair = _pick(rng, _HAIR, 6)
    shirt = _random_colour(rng)
    trousers = _random_colour(rng) if rng.random() < 0.6 else _jitter(rng, (40, 45, 70), 10)
    shoes = _jitter(rng, (30, 28, 26), 6)
    stride = rng.uniform(-0.3, 0.3) * s
    swing = -0.6 * stride
    hip, shoulder = 0.88 * s, 1.44 * s
    parts: list[Part] = []
    for side in (-1, 1):
        hx, fx = side * 0.08 * s, side * stride / 2
        parts.append(
            (
                "poly",
                [
                    (hx - 0.08 * s, hip),
                    (hx + 0.08 * s, hip),
                    (fx + 0.06 * s, 0.05),
                    (fx - 0.06 * s, 0.05),
                ],
                trousers,
            )
        )
        parts.append(("rect", (fx - 0.08 * s, 0.0, fx + 0.08 * s, 0.07 * s), shoes))
    sleeve = shirt if rng.random() < 0.6 else skin
    for side in (-1, 1):
        sx, hx = side * 0.21 * s, side * 0.25 * s + side * swing * 0.3
        parts.append(
            (
                "poly",
                [
                    (sx - 0.05 * s, shoulder),
                    (sx + 0.05 * s, shoulder),
                    (hx + 0.045 * s, 0.86 * s),
                    (hx - 0.045 * s, 0.86 * s),
                ],
                sleeve,
            )
        )
        parts.append(("ellipse", (hx - 0.05 * s, 0.8 * s, hx + 0.05 * s, 0.9 * s), skin))
    coat = hip - (0.25 * s if rng.random() < 0.25 else 0.0)
    parts.append(
        (
            "poly",
            [(-0.18 * s, coat), (0.18 * s, coat), (0.23 * s, shoulder), (-0.23 * s, shoulder)],
            shirt,
        )
    )
    parts.append(("rect", (-0.045 * s, shoulder - 0.02, 0.045 * s, 1.52 * s), skin))
    parts.append(("ellipse", (-0.105 * s, 1.5 * s, 0.105 * s, 1.76 * s), hair))
    parts.append(("ellipse", (-0.095 * s, 1.49 * s, 0.095 * s, 1.71 * s), skin))
    return parts


def _octagon(cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    return [
        (
            cx + r * math.cos(math.radians(22.5 + 45 * k)),
            cy + r * math.sin(math.radians(22.5 + 45 * k)),
        )
        for k in range(8)
    ]


def _pole_parts(rng: np.random.Generator, top: float, half_width: float = 0.04) -> list[Part]:
    grey = _jitter(rng, (130, 132, 135), 12)
    return [("rect", (-half_width, 0.0, half_width, top), grey)]


def _stop_sign_face(rng: np.random.Generator, centre: float) -> list[Part]:
    r = rng.uniform(0.43, 0.5)
    red = _jitter(rng, (200, 20, 28), 10)
    white = _jitter(rng, (240, 240, 240), 5)
    parts = [("poly", _octagon(0, centre, r), white), ("poly", _octagon(0, centre, 0.86 * r), red)]
    # Four white blocks read as "STOP" at the sizes the sign appears in.
    lw, gap = 0.15 * r, 0.06 * r
    x = -2 * lw - 1.5 * gap
    for _ in range(4):
        parts.append(("rect", (x, centre - 0.16 * r, x + lw, centre + 0.16 * r), white))
        x += lw + gap
    return parts


def _traffic_light_housing(rng: np.random.Generator, bottom: float) -> list[Part]:
    hw, h = rng.uniform(0.19, 0.24), rng.uniform(0.95, 1.1)
    body = _jitter(rng, (35, 38, 35), 8) if rng.random() < 0.8 else _jitter(rng, (180, 150, 30), 10)
    parts: list[Part] = []
    if rng.random() < 0.4:  # backplate
        parts.append(
            ("rect", (-hw - 0.1, bottom - 0.06, hw + 0.1, bottom + h + 0.06), (15, 15, 15))
        )
    parts.append(("rect", (-hw, bottom, hw, bottom + h), body))
    lit = int(rng.integers(3))  # 0 red (top), 1 amber, 2 green
    on = [(255, 45, 35), (255, 175, 20), (40, 240, 130)]
    off = [(70, 25, 22), (70, 55, 18), (20, 60, 38)]
    r = 0.7 * hw
    for k in range(3):
        cy = bottom + h * (5 - 2 * k) / 6
        colour = on[k] if k == lit else off[k]
        parts.append(("ellipse", (-r, cy - r, r, cy + r), colour))
    return parts


def _tree_parts(rng: np.random.Generator) -> list[Part]:
    trunk_h = rng.uniform(1.5, 3.0)
    trunk = _jitter(rng, (90, 65, 45), 10)
    green = _jitter(rng, (55, 105, 45), 15)
    parts: list[Part] = [("rect", (-0.15, 0.0, 0.15, trunk_h + 0.5), trunk)]
    if rng.random() < 0.3:  # conifer
        width, height = rng.uniform(1.5, 2.5), rng.uniform(4, 8)
        parts.append(
            (
                "poly",
                [(-width, trunk_h), (width, trunk_h), (0, trunk_h + height)],
                _shade(green, 0.8),
            )
        )
        return parts
    radius = rng.uniform(1.5, 3.0)
    for k in range(int(rng.integers(2, 4))):
        dx, dy = rng.uniform(-0.5, 0.5) * radius, trunk_h + radius * rng.uniform(0.7, 1.3)
        rr = radius * rng.uniform(0.7, 1.0)
        parts.append(
            (
                "ellipse",
                (dx - rr, dy - rr * 0.9, dx + rr, dy + rr * 0.9),
                _shade(green, 1.0 + 0.12 * k),
            )
        )
    return parts


def _street_pole_parts(rng: np.random.Generator, side: float) -> list[Part]:
    top = rng.uniform(4.0, 8.0)
    parts = _pole_parts(rng, top, rng.uniform(0.05, 0.09))
    if rng.random() < 0.6:  # street lamp arm over the road
        grey = parts[0][2]
        arm = -side * rng.uniform(1.0, 2.0)
        parts.append(
            ("poly", [(0, top - 0.1), (0, top + 0.05), (arm, top + 0.25), (arm, top + 0.1)], grey)
        )
        parts.append(("ellipse", (arm - 0.3, top, arm + 0.1, top + 0.25), (200, 200, 190)))
    return parts


def _other_sign_parts(rng: np.random.Generator) -> list[Part]:
    """Signs that are not stop signs: square blue, yellow diamond, round speed limit."""
    top = rng.uniform(1.8, 2.4)
    parts = _pole_parts(rng, top + 0.3)
    kind = rng.integers(3)
    c = top + 0.35
    if kind == 0:
        parts += [
            ("rect", (-0.35, c - 0.35, 0.35, c + 0.35), (240, 240, 240)),
            ("rect", (-0.31, c - 0.31, 0.31, c + 0.31), _jitter(rng, (20, 70, 170), 8)),
        ]
    elif kind == 1:
        parts += [
            ("poly", [(0, c - 0.45), (0.45, c), (0, c + 0.45), (-0.45, c)], (20, 20, 20)),
            (
                "poly",
                [(0, c - 0.38), (0.38, c), (0, c + 0.38), (-0.38, c)],
                _jitter(rng, (240, 200, 20), 8),
            ),
        ]
    else:
        parts += [
            ("ellipse", (-0.35, c - 0.35, 0.35, c + 0.35), (200, 30, 30)),
            ("ellipse", (-0.27, c - 0.27, 0.27, c + 0.27), (245, 245, 245)),
            ("rect", (-0.14, c - 0.1, 0.14, c + 0.1), (30, 30, 30)),
        ]
    return parts


def _building_parts(rng: np.random.Generator, width: float, height: float, d: float) -> list[Part]:
    """A facade from x=0 to x=d*width; windows in a grid (only drawn if big enough)."""
    wall = _pick(rng, _BUILDING, 10)
    x0, x1 = (0.0, width) if d > 0 else (-width, 0.0)
    parts: list[Part] = [("rect", (x0, 0.0, x1, height), wall)]
    if rng.random() < 0.5:
        parts.append(("rect", (x0 - 0.2, height - 0.4, x1 + 0.2, height), _shade(wall, 0.7)))
    glass = _jitter(rng, (70, 85, 105), 10)
    floor = rng.uniform(3.0, 3.6)
    pitch = rng.uniform(2.0, 3.5)
    ww, wh = pitch * rng.uniform(0.4, 0.65), floor * rng.uniform(0.4, 0.6)
    y = 1.0
    while y + wh < height - 0.8:
        x = x0 + 0.7
        while x + ww < x1 - 0.5:
            parts.append(("rect", (x, y, x + ww, y + wh), glass))
            x += pitch
        y += floor
    return parts


# --------------------------------------------------------------------------------------------
# Rendering


@lru_cache(maxsize=4)
def _noise_tiles(height: int, width: int) -> np.ndarray:
    """Gaussian sensor-noise tiles, one per level, from a fixed seed (cropped at random offsets).

    Drawing fresh Gaussian noise per image costs more than the whole rest of the render, so a
    padded tile per size is made once and cropped at a random offset.
    """
    rng = np.random.default_rng(20240601)
    base = rng.standard_normal((height + _NOISE_PAD, width + _NOISE_PAD, 3), dtype=np.float32)
    tiles = [np.rint(base * s).astype(np.int16) for s in _NOISE_LEVELS]
    return np.stack(tiles)


@lru_cache(maxsize=8)
def _row_grid(height: int) -> np.ndarray:
    return np.arange(height, dtype=np.float32) + 0.5


class _Renderer:
    """Lays out one scene from an rng, then draws it."""

    def __init__(self, rng: np.random.Generator, config: SyntheticConfig, classes: tuple[str, ...]):
        self.rng = rng
        self.cfg = config
        self.classes = classes
        self.W, self.H = config.width, config.height
        self.cam = Camera.from_config(config)
        self.min_box = config.min_box_frac * self.H

    # -- projection ------------------------------------------------------------------------

    def ground_point(self, x_road: float, z: float) -> tuple[float, float]:
        """Pixel (continuous, pixel centres at +0.5) of a ground point given in road coordinates."""
        x = x_road + z * self.yaw
        return (
            self.cam.cx + self.cam.focal * x / z,
            self.cam.cy + self.cam.focal * self.cam.height / z,
        )

    def project(self, parts: list[Part], x: float, z: float, haze: float) -> list[Part]:
        """Billboard parts (metres) at camera-frame ``(x, z)`` to PIL pixel coordinates.

        PIL puts integer coordinates on pixel centres, hence the -0.5 from continuous coordinates.
        Colours are blended towards the haze colour by distance: no per-pixel haze pass needed.
        """
        f, cam = self.cam.focal, self.cam
        s = f / z
        u0 = cam.cx + f * x / z - 0.5
        v0 = cam.cy + f * cam.height / z - 0.5
        hz = self.haze_colour
        out = []
        for kind, coords, colour in parts:
            colour = tuple(int(c + (h - c) * haze) for c, h in zip(colour, hz))
            if kind == "poly":
                out.append((kind, [(u0 + s * px, v0 - s * py) for px, py in coords], colour))
            else:
                xa, ya, xb, yb = coords
                ua, ub = sorted((u0 + s * xa, u0 + s * xb))
                va, vb = sorted((v0 - s * ya, v0 - s * yb))
                out.append((kind, (ua, va, ub, vb), colour))
        return out

    def haze_at(self, z: float) -> float:
        return 1.0 - math.exp(-z / self.visibility)

    # -- layout ----------------------------------------------------------------------------

    def render(self) -> Scene:
        self.layout_world()
        drawables = self.layout_drawables()
        drawables.sort(key=lambda d: -d.z)  # far to near; stable, so a pole stays under its face
        for d in drawables:
            self.rasterise(d)
        drawables = [d for d in drawables if d.mask is not None]
        boxes, objects, drawables = self.resolve_visibility(drawables)
        labels = Image.fromarray(self.background_labels())
        image = self.paint(drawables, ImageDraw.Draw(labels))
        depth = self.depth_map(drawables)
        return Scene(image, depth, np.asarray(labels).copy(), boxes, objects, self.cam)

    def layout_world(self) -> None:
        """Road, roadside, weather and lighting."""
        rng = self.rng
        self.yaw = math.tan(math.radians(rng.uniform(-4.0, 4.0)))
        self.lane_w = rng.uniform(3.2, 3.8)
        self.n_lanes = int(rng.integers(2, 5))
        ego = int(rng.integers(self.n_lanes))
        offset = rng.uniform(-0.3, 0.3)
        self.xl = -(ego + 0.5) * self.lane_w - offset
        self.xr = self.xl + self.n_lanes * self.lane_w
        self.sidewalk = rng.uniform(1.5, 4.0)
        self.urban = rng.random() < 0.5
        self.two_way = rng.random() < 0.5
        weather = rng.random()
        if weather < 0.55:  # clear
            zenith, horizon = (60, 120, 200), (175, 205, 230)
            self.visibility = rng.uniform(300, 900)
        elif weather < 0.85:  # overcast
            g = rng.uniform(150, 200)
            zenith, horizon = (g - 10, g - 5, g), (g + 25, g + 25, g + 25)
            self.visibility = rng.uniform(150, 400)
        else:  # low sun
            zenith, horizon = (70, 90, 150), (235, 175, 130)
            self.visibility = rng.uniform(200, 600)
        self.zenith = _jitter(rng, zenith, 10)
        self.haze_colour = _jitter(rng, horizon, 8)
        if self.urban:
            self.roadside = _jitter(rng, (150, 145, 135), 12)
        else:
            self.roadside = (
                _jitter(rng, (80, 120, 55), 15)
                if rng.random() < 0.75
                else _jitter(rng, (140, 115, 80), 12)
            )
        self.asphalt = _jitter(rng, (90, 90, 94), 12)
        self.pavement = _jitter(rng, (175, 172, 165), 10)
        # Global light: contrast, brightness and a sun tint, applied as a per-channel LUT.
        self.contrast = rng.uniform(0.8, 1.2)
        self.brightness = rng.uniform(0.75, 1.1)
        self.tint = np.clip(rng.normal(1.0, 0.03, 3), 0.92, 1.08)
        self.noise_level = int(rng.integers(len(_NOISE_LEVELS)))
        self.noise_offset = (int(rng.integers(_NOISE_PAD)), int(rng.integers(_NOISE_PAD)))
        self.hill_seed = int(rng.integers(2**31))

    def sample_position(
        self, zmin: float, zmax: float, lateral: tuple[float, float], near_bias: float = 1.0
    ) -> tuple[float, float] | None:
        """A (camera-frame x, z) whose centre projects inside the image, or None.

        ``near_bias`` > 1 skews distances towards ``zmin`` (``zmin + (zmax - zmin) * u**bias``).
        """
        rng = self.rng
        half_tan = 0.5 * self.W / self.cam.focal
        for _ in range(8):
            z = zmin + (zmax - zmin) * rng.random() ** near_bias
            x = rng.uniform(*lateral) + z * self.yaw
            if abs(x / z) < 0.95 * half_tan:
                return x, z
        return None

    def object_zmax(self, real_height: float) -> float:
        """Farthest distance at which an object this tall stays clearly above the box minimum."""
        return min(60.0, self.cam.focal * real_height / (1.15 * self.min_box))

    def roadside_range(self, near: float, far: float) -> tuple[float, float]:
        if self.rng.random() < 0.5:
            return (self.xr + near, self.xr + far)
        return (self.xl - far, self.xl - near)

    def layout_drawables(self) -> list[_Drawable]:
        rng = self.rng
        out: list[_Drawable] = []
        if self.cfg.distractors:
            self.layout_distractors(out)
        counts = [1, 1, 1, 2, 2, 3, 1, 2, 3]
        for name in RENDERABLE_CLASSES:
            # Independent draws per class, always made, so class layouts do not shift each other.
            present = rng.random() < self.cfg.presence_prob
            n = min(counts[int(rng.integers(len(counts)))], self.cfg.max_instances)
            if not present or name not in self.classes:
                continue
            for _ in range(n):
                getattr(self, f"place_{name}")(out)
        return out

    def add(
        self,
        out: list[_Drawable],
        parts: list[Part],
        x: float,
        z: float,
        label: str | None = None,
        shadow: list[Part] | None = None,
        regions: list[int] | None = None,
    ) -> None:
        """Place a billboard; ``regions``: the segmentation class of each part (default: the
        labelled object's class, else roadside)."""
        haze = self.haze_at(z)
        d = _Drawable(z, x, self.project(parts, x, z, haze), label)
        d.regions = regions or [_OBJECT_REGION.get(label, _ROADSIDE)] * len(parts)
        if shadow:
            # Shadows lie on the ground in front of the foot row (y <= 0), where no farther object
            # has pixels, so they never change what is visible of a labelled object.
            dark = _shade(self.asphalt, 0.45)
            d.shadow = self.project([(k, c, dark) for k, c, _ in shadow], x, z, haze)
        out.append(d)

    def place_car(self, out: list[_Drawable]) -> None:
        rng = self.rng
        parts = _car_parts(rng)
        side_view = any(k == "ellipse" for k, _, _ in parts)
        if side_view and rng.random() < 0.5:  # parked at a kerb
            lateral = (
                (self.xr - 1.2, self.xr - 0.9)
                if rng.random() < 0.5
                else (self.xl + 0.9, self.xl + 1.2)
            )
        else:  # in a lane
            lane = int(rng.integers(self.n_lanes))
            centre = self.xl + (lane + 0.5) * self.lane_w
            lateral = (centre - 0.4, centre + 0.4)
        pos = self.sample_position(6.0, self.object_zmax(1.35), lateral, _NEAR_BIAS)
        if pos:
            half = 2.4 if side_view else 1.0
            shadow = [("ellipse", (-half - 0.1, -0.3, half + 0.1, 0.0), (30, 30, 30))]
            self.add(out, parts, *pos, label="car", shadow=shadow)

    def place_pedestrian(self, out: list[_Drawable]) -> None:
        rng = self.rng
        parts = _pedestrian_parts(rng)
        if rng.random() < 0.7:
            lateral = self.roadside_range(0.3, self.sidewalk + 1.0)
        else:  # crossing the road
            lateral = (self.xl + 0.5, self.xr - 0.5)
        pos = self.sample_position(5.0, self.object_zmax(1.55), lateral, _NEAR_BIAS)
        if pos:
            shadow = [("ellipse", (-0.35, -0.12, 0.35, 0.0), (35, 35, 35))]
            self.add(out, parts, *pos, label="pedestrian", shadow=shadow)

    def place_stop_sign(self, out: list[_Drawable]) -> None:
        rng = self.rng
        pole_top = rng.uniform(1.8, 2.3)
        face = _stop_sign_face(rng, pole_top + 0.45)
        pole = _pole_parts(rng, pole_top + 0.4)
        pos = self.sample_position(5.0, self.object_zmax(0.8), self.roadside_range(0.3, 1.5))
        if pos:
            self.add(out, pole, *pos)
            self.add(out, face, *pos, label="stop_sign")

    def place_traffic_light(self, out: list[_Drawable]) -> None:
        rng = self.rng
        bottom = rng.uniform(2.4, 3.4)
        housing = _traffic_light_housing(rng, bottom)
        pole = _pole_parts(rng, bottom + 0.3, 0.06)
        pos = self.sample_position(6.0, self.object_zmax(0.95), self.roadside_range(0.3, 1.5))
        if pos:
            self.add(out, pole, *pos)
            self.add(out, housing, *pos, label="traffic_light")

    def layout_distractors(self, out: list[_Drawable]) -> None:
        rng = self.rng
        if self.urban:
            for d, edge in ((1.0, self.xr + self.sidewalk), (-1.0, self.xl - self.sidewalk)):
                z = rng.uniform(12, 25)
                while z < 78:
                    width, height = rng.uniform(6, 25), rng.uniform(6, 30)
                    x = edge + d * rng.uniform(0.5, 3.0)
                    if rng.random() < 0.85:
                        self.add(out, _building_parts(rng, width, height, d), x + z * self.yaw, z)
                    z += rng.uniform(6, 20)
        for _ in range(int(rng.integers(0, 7 if not self.urban else 4))):
            lateral = self.roadside_range(self.sidewalk + 0.5, self.sidewalk + 8.0)
            pos = self.sample_position(8.0, 70.0, lateral)
            if pos:
                self.add(out, _tree_parts(rng), *pos)
        for _ in range(int(rng.integers(0, 4))):
            side = 1.0 if rng.random() < 0.5 else -1.0
            lateral = (self.xr + 0.3, self.xr + 1.0) if side > 0 else (self.xl - 1.0, self.xl - 0.3)
            pos = self.sample_position(6.0, 60.0, lateral)
            if pos:
                self.add(out, _street_pole_parts(rng, side), *pos)
        for _ in range(int(rng.integers(0, 3))):
            pos = self.sample_position(6.0, 40.0, self.roadside_range(0.3, 1.5))
            if pos:
                parts = _other_sign_parts(rng)  # the pole first, then the face
                self.add(out, parts, *pos, regions=[_ROADSIDE] + [_SIGN] * (len(parts) - 1))

    # -- rasterising and visibility ----------------------------------------------------------

    def rasterise(self, d: _Drawable) -> None:
        """Draw the silhouette (union of parts) into a local mask.

        Labelled objects get an unclipped mask so their full area (hidden + visible) is known;
        distractors are clipped to the image since only their visible pixels matter.
        """
        xs, ys = [], []
        for kind, coords, _ in d.parts:
            if kind == "poly":
                xs += [p[0] for p in coords]
                ys += [p[1] for p in coords]
            else:
                xs += [coords[0], coords[2]]
                ys += [coords[1], coords[3]]
        x0, y0 = math.floor(min(xs)) - 1, math.floor(min(ys)) - 1
        x1, y1 = math.ceil(max(xs)) + 2, math.ceil(max(ys)) + 2
        if d.label is None:
            x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, self.W), min(y1, self.H)
        if x1 <= max(x0, 0) or y1 <= max(y0, 0) or x0 >= self.W or y0 >= self.H:
            return
        mask = Image.new("L", (x1 - x0, y1 - y0), 0)
        draw = ImageDraw.Draw(mask)
        for kind, coords, _ in d.parts:
            _draw(draw, kind, _shift(kind, coords, x0, y0), 255)
        d.x0, d.y0, d.mask = x0, y0, mask
        d.mask_np = np.asarray(mask) > 0
        d.area = int(np.count_nonzero(d.mask_np))
        if d.area == 0:
            d.mask = None

    def overlap(self, d: _Drawable) -> tuple[tuple[slice, slice], tuple[slice, slice]] | None:
        """Slices of the image and of the drawable's mask where they overlap."""
        h, w = d.mask_np.shape
        ia, ib = max(d.y0, 0), min(d.y0 + h, self.H)
        ja, jb = max(d.x0, 0), min(d.x0 + w, self.W)
        if ia >= ib or ja >= jb:
            return None
        return (
            (slice(ia, ib), slice(ja, jb)),
            (slice(ia - d.y0, ib - d.y0), slice(ja - d.x0, jb - d.x0)),
        )

    def instance_map(self, drawables: list[_Drawable]) -> np.ndarray:
        inst = np.zeros((self.H, self.W), dtype=np.uint16)
        for i, d in enumerate(drawables, start=1):
            ov = self.overlap(d)
            if ov:
                inst[ov[0]][d.mask_np[ov[1]]] = i
        return inst

    def resolve_visibility(self, drawables: list[_Drawable]):
        """Drop labelled objects that fail the labelling rule, then box the survivors.

        Removing an object only uncovers others, so survivors of one pass still pass; a second
        pass recomputes their (possibly larger) visible boxes.
        """
        for _ in range(2):
            inst = self.instance_map(drawables)
            keep, boxes, objects = [], [], []
            changed = False
            for i, d in enumerate(drawables, start=1):
                if d.label is None:
                    keep.append(d)
                    continue
                box, visible = self.visible_box(d, inst, i)
                ok = (
                    box is not None
                    and visible / d.area >= self.cfg.min_visible
                    and box[3] - box[1] >= self.min_box
                    and box[2] - box[0] >= max(2.0, 0.2 * self.min_box)
                )
                if ok:
                    keep.append(d)
                    boxes.append((*box, d.label))
                    objects.append(SceneObject(d.label, d.z, d.lateral, box, visible / d.area))
                else:
                    changed = True
            drawables = keep
            if not changed:
                break
        return boxes, objects, drawables

    def visible_box(self, d: _Drawable, inst: np.ndarray, i: int):
        ov = self.overlap(d)
        if ov is None:
            return None, 0
        rows, cols = np.nonzero(inst[ov[0]] == i)
        if rows.size == 0:
            return None, 0
        ia, ja = ov[0][0].start, ov[0][1].start
        box = (
            int(ja + cols.min()),
            int(ia + rows.min()),
            int(ja + cols.max() + 1),
            int(ia + rows.max() + 1),
        )
        return box, int(rows.size)

    # -- painting ----------------------------------------------------------------------------

    def background(self) -> Image.Image:
        """Sky gradient above the horizon, hazed roadside colour below, one colour per row."""
        H, W, cam = self.H, self.W, self.cam
        v = _row_grid(H)
        t = np.clip((cam.cy - v) / cam.cy, 0, 1)[:, None] ** 0.7
        haze = np.asarray(self.haze_colour, np.float32)
        sky = haze * (1 - t) + np.asarray(self.zenith, np.float32) * t
        below = v - cam.cy
        with np.errstate(divide="ignore"):
            z = np.where(below > 0, cam.focal * cam.height / np.maximum(below, 1e-6), np.inf)
        a = (1 - np.exp(-z / self.visibility))[:, None]
        # Mild row-wise banding reads as ground texture at no cost.
        band = 1 + 0.03 * np.sin(np.minimum(z, 1e4)[:, None] * 1.7)
        ground = np.asarray(self.roadside, np.float32) * band * (1 - a) + haze * a
        rows = np.where((below > 0)[:, None], ground, sky)
        column = np.ascontiguousarray(np.clip(rows, 0, 255).astype(np.uint8)[:, None, :])
        # Stretching a one-pixel column is ~5x faster than np.repeat plus a copy into Pillow.
        return Image.fromarray(column).resize((W, H), Image.Resampling.NEAREST)

    def background_labels(self) -> np.ndarray:
        """The segmentation of :meth:`background`: sky above the horizon, roadside below."""
        below = _row_grid(self.H) - self.cam.cy
        rows = np.where(below > 0, _ROADSIDE, _SKY).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(rows[:, None], self.W, axis=1))

    def draw_ground(self, draw: ImageDraw.ImageDraw, labels: ImageDraw.ImageDraw) -> None:
        """Far hills, kerbs, sidewalks, road and lane markings, in PIL coordinates; ``labels``
        gets the same shapes in their segmentation classes."""

        def polygon(points, fill, region: int) -> None:
            draw.polygon(points, fill=fill)
            labels.polygon(points, fill=region)

        rng = self.rng
        cam = self.cam
        z_near = 0.9 * cam.focal * cam.height / (self.H - cam.cy)
        z_far = 3000.0

        def quad(xa: float, xb: float, za: float, zb: float) -> list[tuple[float, float]]:
            pts = [
                self.ground_point(xa, za),
                self.ground_point(xb, za),
                self.ground_point(xb, zb),
                self.ground_point(xa, zb),
            ]
            return [(u - 0.5, v - 0.5) for u, v in pts]

        # Distant hills or tree line just above the horizon (beyond range: depth stays 0).
        hills = np.random.default_rng(self.hill_seed)
        n = 12
        heights = cam.cy - self.H * hills.uniform(0.0, 0.06, n + 1)
        pts = [(self.W * k / n, heights[k]) for k in range(n + 1)]
        pts += [(self.W, cam.cy), (0, cam.cy)]
        tone = _jitter(hills, (70, 95, 70) if not self.urban else (120, 120, 130), 10)
        a = 0.6
        colour = tuple(int(c + (h - c) * a) for c, h in zip(tone, self.haze_colour))
        polygon(pts, colour, _ROADSIDE)

        def hazed(colour: Colour, z: float) -> Colour:
            a = self.haze_at(z)
            return tuple(int(c + (h - c) * a) for c, h in zip(colour, self.haze_colour))

        # Drawn in depth bands so the haze also fades the road towards the horizon.
        bands = [z_near, 8, 14, 22, 35, 55, 90, 150, 300, z_far]
        for za, zb in zip(bands[:-1], bands[1:]):
            zm = math.sqrt(za * zb)
            sw = self.sidewalk
            pavement = hazed(self.pavement, zm)
            polygon(quad(self.xl - sw, self.xr + sw, za, zb), pavement, _ROADSIDE)
            polygon(quad(self.xl, self.xr, za, zb), hazed(self.asphalt, zm), _ROAD)
            kerb = hazed(_shade(self.pavement, 1.1), zm)
            polygon(quad(self.xl - 0.2, self.xl, za, zb), kerb, _ROADSIDE)
            polygon(quad(self.xr, self.xr + 0.2, za, zb), kerb, _ROADSIDE)
            white = hazed((235, 235, 230), zm)
            polygon(quad(self.xl + 0.2, self.xl + 0.35, za, zb), white, _MARKING)
            polygon(quad(self.xr - 0.35, self.xr - 0.2, za, zb), white, _MARKING)
        # Dashed lane lines (3 m dash every 12 m); a double yellow centre line on two-way roads.
        phase = rng.uniform(0, 12)
        centre = self.n_lanes // 2 if self.two_way else -1
        for k in range(1, self.n_lanes):
            xb = self.xl + k * self.lane_w
            if k == centre:
                yellow = (225, 185, 40)
                for off in (-0.2, 0.08):
                    for za, zb in zip(bands[:-1], bands[1:]):
                        zm = math.sqrt(za * zb)
                        polygon(
                            quad(xb + off, xb + off + 0.12, za, zb), hazed(yellow, zm), _MARKING
                        )
                continue
            z = z_near + phase - 12
            while z < 90:
                if z + 3 > z_near:
                    za = max(z, z_near)
                    dash = hazed((235, 235, 230), z)
                    polygon(quad(xb - 0.07, xb + 0.07, za, z + 3), dash, _MARKING)
                z += 12

    def paint(self, drawables: list[_Drawable], labels: ImageDraw.ImageDraw) -> np.ndarray:
        """The picture; ``labels`` (the segmentation mask) gets every shape's class."""
        img = self.background()
        draw = ImageDraw.Draw(img)
        self.draw_ground(draw, labels)
        for d in drawables:
            for kind, coords, colour in d.shadow:
                _draw(draw, kind, coords, colour)
            w, h = d.mask.size
            local = Image.new("RGB", (w, h))
            ldraw = ImageDraw.Draw(local)
            for (kind, coords, colour), region in zip(d.parts, d.regions):
                _draw(ldraw, kind, _shift(kind, coords, d.x0, d.y0), colour)
                # Integer shifts raster the same pixels: the mask matches the pasted parts.
                _draw(labels, kind, coords, region)
            img.paste(local, (d.x0, d.y0), d.mask)
        img = img.point(self.light_lut())
        if not self.cfg.noise:
            return np.asarray(img).copy()
        dy, dx = self.noise_offset
        noise = _noise_tiles(self.H, self.W)[self.noise_level, dy : dy + self.H, dx : dx + self.W]
        arr = np.add(np.asarray(img), noise, dtype=np.int16)
        np.clip(arr, 0, 255, out=arr)
        return arr.astype(np.uint8)

    def light_lut(self) -> list[int]:
        x = np.arange(256, dtype=np.float64)
        lut = []
        for gain in self.tint:
            y = ((x - 128) * self.contrast + 128) * self.brightness * gain
            lut += np.clip(np.rint(y), 0, 255).astype(int).tolist()
        return lut

    def depth_map(self, drawables: list[_Drawable]) -> np.ndarray:
        rows = self.cam.ground_depth_rows(self.H)
        depth = np.repeat(rows[:, None], self.W, axis=1)
        for d in drawables:
            ov = self.overlap(d)
            if ov:
                depth[ov[0]][d.mask_np[ov[1]]] = d.z if d.z <= self.cam.max_depth else 0.0
        return depth


def _shift(kind: str, coords, x0: int, y0: int):
    if kind == "poly":
        return [(x - x0, y - y0) for x, y in coords]
    return (coords[0] - x0, coords[1] - y0, coords[2] - x0, coords[3] - y0)


def _draw(draw: ImageDraw.ImageDraw, kind: str, coords, fill) -> None:
    if kind == "poly":
        draw.polygon(coords, fill=fill)
    elif kind == "rect":
        draw.rectangle(coords, fill=fill)
    else:
        draw.ellipse(coords, fill=fill)


def class_counts(manifest: str | Path, classes: Sequence[str] = DEFAULT_CLASSES) -> dict:
    """Per-class counts of positive, negative and unknown presence in a JSONL manifest."""
    counts = {c: {"1": 0, "0": 0, UNKNOWN_TOKEN: 0} for c in classes}
    with Path(manifest).open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                presence = json.loads(line).get("presence", {})
                for c in classes:
                    counts[c][str(presence.get(c, UNKNOWN_TOKEN))] += 1
    return counts
