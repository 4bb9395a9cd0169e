"""Cityscapes ``gtFine`` polygons to boxes, label ids to segmentation masks, disparity to depth.

Layout under ``--root`` (as downloaded)::

    gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_polygons.json
    gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png     (optional)
    leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    disparity/<split>/<city>/<city>_<seq>_<frame>_disparity.png     (optional)
    camera/<split>/<city>/<city>_<seq>_<frame>_camera.json          (optional)

A box is the extent of an object's polygon. ``*group`` labels (``persongroup``, ``cargroup``)
are crowds: ignore regions that make their class present. Cityscapes has no stop-sign class
(``traffic sign`` is every sign), so ``stop_sign`` is ``?``.

Segmentation: each ``labelIds`` PNG is mapped through :data:`SEGMENTATION_MAPPING` (Cityscapes
label id -> index into :data:`SEGMENTATION_CLASSES`, the segmentation task's default class list)
and written as an 8-bit PNG in a folder beside the manifest. Ids without a mapping (unlabeled,
ego vehicle, rectification border, out of roi, static, dynamic, license plate) become 255, not
annotated. Cityscapes has no lane-marking label, so that class has no pixels.

Depth: disparity ``d = (p - 1) / 256`` for a stored value ``p > 0`` (``p = 0``: invalid), and
``depth = baseline * fx / d`` metres. It is written as the manifest's uint16 metres x 256 PNGs in
a folder beside the manifest; depths beyond 255.99 m do not fit and are stored as 0 (no
measurement), as are pixels with ``d = 0`` (infinitely far).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

from drivemtl.converters.base import (
    Conversion,
    ConvertOptions,
    Report,
    SourceData,
    SourceImage,
    SourceObject,
    build_manifest,
    check_out,
    parse_box,
    require_dir,
)
from drivemtl.data.pixel_labels import IGNORE_INDEX
from drivemtl.data.synthetic import SEGMENTATION_CLASSES
from drivemtl.errors import DriveMTLError
from drivemtl.jsonl import load_file

POLYGONS_SUFFIX = "_gtFine_polygons.json"
# Every label of the Cityscapes scripts (labels.py), so that absent ones still count as annotated.
CITYSCAPES_LABELS = {
    "unlabeled", "ego vehicle", "rectification border", "out of roi", "static", "dynamic",
    "ground", "road", "sidewalk", "parking", "rail track", "building", "wall", "fence",
    "guard rail", "bridge", "tunnel", "pole", "polegroup", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "caravan",
    "trailer", "train", "motorcycle", "bicycle", "license plate",
}  # fmt: skip
MAX_DEPTH_M = 65535 / 256
LABEL_IDS_SUFFIX = "_gtFine_labelIds.png"

_CITYSCAPES_IDS = {
    "ground": 6, "road": 7, "sidewalk": 8, "parking": 9, "rail track": 10, "building": 11,
    "wall": 12, "fence": 13, "guard rail": 14, "bridge": 15, "tunnel": 16, "pole": 17,
    "polegroup": 18, "traffic light": 19, "traffic sign": 20, "vegetation": 21, "terrain": 22,
    "sky": 23, "person": 24, "rider": 25, "car": 26, "truck": 27, "bus": 28, "caravan": 29,
    "trailer": 30, "train": 31, "motorcycle": 32, "bicycle": 33,
}  # fmt: skip
_SEGMENTATION_GROUPS = {
    "road": ("road",),
    "roadside": (
        "ground", "sidewalk", "parking", "rail track", "building", "wall", "fence",
        "guard rail", "bridge", "tunnel", "pole", "polegroup", "vegetation", "terrain",
    ),
    "sky": ("sky",),
    "vehicle": ("car", "truck", "bus", "caravan", "trailer", "train", "motorcycle", "bicycle"),
    "pedestrian": ("person", "rider"),
    "sign": ("traffic sign",),
    "traffic_light": ("traffic light",),
}  # fmt: skip
SEGMENTATION_MAPPING: dict[int, int] = {
    _CITYSCAPES_IDS[label]: SEGMENTATION_CLASSES.index(name)
    for name, labels in _SEGMENTATION_GROUPS.items()
    for label in labels
}
"""Cityscapes label id -> class index of the default segmentation classes; others are 255."""


def map_label_ids(ids: np.ndarray) -> np.ndarray:
    """A ``labelIds`` array to segmentation class indices (uint8, 255 = not annotated)."""
    table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for label_id, index in SEGMENTATION_MAPPING.items():
        table[label_id] = index
    return table[ids.astype(np.int64)]


def disparity_to_depth(stored: np.ndarray, baseline: float, fx: float) -> np.ndarray:
    """Metric depth (float metres, 0 = invalid) from a Cityscapes disparity PNG's values.

    Args:
        stored: The PNG's uint16 values ``p``; disparity is ``(p - 1) / 256``, ``p = 0`` invalid.
        baseline: Stereo baseline in metres (camera JSON ``extrinsic.baseline``).
        fx: Focal length in pixels (camera JSON ``intrinsic.fx``).
    """
    p = stored.astype(np.float64)
    disparity = (p - 1.0) / 256.0
    valid = (stored > 0) & (disparity > 0)
    depth = np.zeros_like(p)
    depth[valid] = baseline * fx / disparity[valid]
    return depth


def encode_depth(depth_m: np.ndarray) -> np.ndarray:
    """uint16 metres x 256 (KITTI convention); unrepresentable depths become 0 (no measurement)."""
    scaled = np.rint(depth_m * 256.0)
    valid = (depth_m > 0) & (scaled >= 1) & (scaled <= 65535)
    return np.where(valid, scaled, 0).astype(np.uint16)


def read_cityscapes(
    root: str | Path,
    split: str,
    report: Report,
    depth_dir: str | Path | None = None,
    segmentation_dir: str | Path | None = None,
) -> SourceData:
    """Parse ``gtFine`` polygons of one split; with ``depth_dir`` / ``segmentation_dir``,
    write depth PNGs / segmentation masks there.

    Args:
        root: The Cityscapes root folder.
        split: ``train``, ``val`` or ``test``.
        report: Receives file- and entry-level problems.
        depth_dir: Where to write ``<city>/<prefix>_depth.png``; ``None``: no depth.
        segmentation_dir: Where to write ``<city>/<prefix>_segmentation.png``; ``None``: no
            masks.
    """
    root = require_dir(root, "Cityscapes root")
    gt = root / "gtFine" / split
    if not gt.is_dir():
        found = sorted(p.name for p in (root / "gtFine").glob("*") if p.is_dir())
        raise DriveMTLError(
            f"Cityscapes split folder not found: {gt} (splits found: {', '.join(found) or 'none'})"
        )
    files = sorted(gt.rglob(f"*{POLYGONS_SUFFIX}"))
    if not files:
        raise DriveMTLError(f"No *{POLYGONS_SUFFIX} files under {gt}")

    if depth_dir is not None and not (root / "disparity" / split).is_dir():
        report.notes.append(f"no {root / 'disparity' / split} folder: no depth maps written")
        depth_dir = None
    records = []
    dropped_far = missing_masks = 0
    for path in files:
        city = path.parent.name
        prefix = path.name[: -len(POLYGONS_SUFFIX)]
        image = root / "leftImg8bit" / split / city / f"{prefix}_leftImg8bit.png"
        try:
            data = load_file(path, "polygon file")
            if not isinstance(data, dict) or not isinstance(data.get("objects"), list):
                raise ValueError("no 'objects' list")
        except (DriveMTLError, ValueError) as e:
            report.skip(path, "", "malformed file", str(e))
            continue
        record = SourceImage(image, str(path))
        w, h = data.get("imgWidth"), data.get("imgHeight")
        if isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0:
            record.size = (w, h)
        for k, obj in enumerate(data["objects"]):
            if not isinstance(obj, dict) or not isinstance(obj.get("label"), str):
                report.problem(
                    path, f"object {k}", "malformed object", repr(obj)[:80], "object skipped"
                )
                continue
            if obj.get("deleted"):
                continue  # removed in the annotation tool, kept in the file
            label = obj["label"]
            crowd = label.endswith("group")
            if crowd:
                label = label[: -len("group")]
            record.objects.append(
                SourceObject(
                    label, _polygon_box(obj.get("polygon")), f"object {k} ({obj['label']})", crowd
                )
            )
        if depth_dir is not None and image.is_file():
            try:
                depth, far = _write_depth(root, split, city, prefix, Path(depth_dir))
                record.depth = depth
                dropped_far += far
            except FileNotFoundError as e:
                report.problem(path, "", "depth input not found", str(e), "no depth")
            except (OSError, ValueError, KeyError, TypeError) as e:
                report.problem(path, "", "cannot convert disparity", str(e), "no depth")
        ids = path.with_name(prefix + LABEL_IDS_SUFFIX)
        # No mask (nor depth) for a missing image: the entry is skipped, and the file would be
        # left behind in the output folder with no manifest line pointing at it.
        if segmentation_dir is not None and ids.is_file() and image.is_file():
            try:
                record.segmentation = _write_mask(ids, Path(segmentation_dir) / city, prefix)
            except (OSError, ValueError) as e:
                report.problem(path, "", "cannot convert label ids", str(e), "no mask")
        elif segmentation_dir is not None and image.is_file():
            missing_masks += 1
        records.append(record)
    if missing_masks:
        report.notes.append(
            f"{missing_masks} image(s) without a *{LABEL_IDS_SUFFIX} file: no segmentation mask"
        )
    if dropped_far:
        report.notes.append(
            f"{dropped_far} disparity pixel(s) beyond {MAX_DEPTH_M:.2f} m stored as 0"
        )
    return SourceData(records, declared=set(CITYSCAPES_LABELS))


def _polygon_box(polygon: object) -> tuple[float, float, float, float] | None:
    if not isinstance(polygon, list) or not polygon:
        return None
    try:
        xs = [float(p[0]) for p in polygon]
        ys = [float(p[1]) for p in polygon]
    except (TypeError, ValueError, IndexError):
        return None
    return parse_box((min(xs), min(ys), max(xs), max(ys)))


def _write_mask(ids_path: Path, folder: Path, prefix: str) -> Path:
    with Image.open(ids_path) as im:
        mode = im.mode
        ids = np.asarray(im)
    if ids.ndim != 2:
        raise ValueError(
            f"{ids_path} has mode {mode}, not a single-channel label id PNG (the "
            "*_gtFine_color.png files are the coloured pictures, not the ids)"
        )
    if ids.size and (int(ids.max()) > 255 or int(ids.min()) < 0):
        raise ValueError(f"{ids_path} holds ids outside 0-255 (up to {int(ids.max())})")
    out = folder / f"{prefix}_segmentation.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(map_label_ids(ids)).save(out)
    return out


def _write_depth(
    root: Path, split: str, city: str, prefix: str, depth_dir: Path
) -> tuple[Path, int]:
    disparity = root / "disparity" / split / city / f"{prefix}_disparity.png"
    camera = root / "camera" / split / city / f"{prefix}_camera.json"
    for needed in (disparity, camera):
        if not needed.is_file():
            raise FileNotFoundError(str(needed))
    cam = load_file(camera, "camera file")
    baseline = float(cam["extrinsic"]["baseline"])
    fx = float(cam["intrinsic"]["fx"])
    if not (math.isfinite(baseline) and math.isfinite(fx) and baseline > 0 and fx > 0):
        raise ValueError(f"{camera}: baseline and fx must be positive, got {baseline}, {fx}")
    with Image.open(disparity) as im:
        stored = np.asarray(im)
    if stored.ndim != 2:
        raise ValueError(f"{disparity} is not a single-channel disparity PNG")
    depth = disparity_to_depth(stored, baseline, fx)
    encoded = encode_depth(depth)
    far = int(((depth > 0) & (encoded == 0)).sum())
    out = depth_dir / city / f"{prefix}_depth.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(encoded).save(out)
    return out, far


def convert_cityscapes(
    root: str | Path,
    split: str,
    *,
    out: str | Path | None = None,
    options: ConvertOptions | None = None,
    depth: bool = True,
    depth_dir: str | Path | None = None,
    segmentation: bool = True,
    segmentation_dir: str | Path | None = None,
) -> Conversion:
    """Convert one Cityscapes split (see :func:`read_cityscapes`).

    Args:
        root: The Cityscapes root folder.
        split: ``train``, ``val`` or ``test``.
        out: The manifest to be written; depth PNGs go to ``<out stem>_depth/`` beside it,
            segmentation masks to ``<out stem>_segmentation/``.
        options: Conversion options.
        depth: Convert disparity to depth maps when the disparity and camera files exist.
        depth_dir: Where to write depth PNGs instead of beside ``out``.
        segmentation: Convert ``labelIds`` PNGs to segmentation masks when they exist.
        segmentation_dir: Where to write the masks instead of beside ``out`` (without either,
            no masks are written).
    """
    out = check_out(out)
    if depth and depth_dir is None:
        if out is None:
            raise DriveMTLError("Cityscapes depth needs an output folder: give out= or depth_dir=")
        depth_dir = out.parent / f"{out.stem}_depth"
    if segmentation and segmentation_dir is None and out is not None:
        segmentation_dir = out.parent / f"{out.stem}_segmentation"
    report = Report()
    data = read_cityscapes(
        root,
        split,
        report,
        depth_dir if depth else None,
        segmentation_dir if segmentation else None,
    )
    return build_manifest("cityscapes", data, report, options, out)
