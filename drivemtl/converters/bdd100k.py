"""BDD100K detection labels: the official JSON and the older per-image JSON.

* Official (``det_20``/``bdd100k_labels_images_*.json``): a list of frames
  ``{"name", "attributes", "labels": [{"category", "box2d": {x1,y1,x2,y2}, "attributes"}]}``;
  a frame without ``labels`` has no object.
* Older per-image files (``--labels`` a folder, or one file):
  ``{"name", "frames": [{"objects": [{"category", "box2d", "attributes"}]}]}``.

BDD100K annotates its detection categories on every frame and has no stop-sign class, so with the
default classes ``stop_sign`` is ``?``. Labels without ``box2d`` (lanes, drivable areas) are not
objects. A box whose ``attributes.crowd`` is true is an ignore region. The frame's scene
attributes (weather, scene, time of day) go to ``meta`` for slicing metrics.
"""

from __future__ import annotations

from pathlib import Path

from drivemtl.converters.base import (
    Conversion,
    ConvertOptions,
    Report,
    SourceData,
    SourceImage,
    SourceObject,
    build_manifest,
    check_out,
    find_image,
    load_json,
    parse_box,
    require_dir,
)
from drivemtl.errors import DriveMTLError

# Detection categories of the 2020 release and of the 2018 (per-image JSON) release.
BDD100K_CATEGORIES = {
    "pedestrian", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
    "traffic light", "traffic sign", "other vehicle", "other person", "trailer",
    "person", "motor", "bike",
}  # fmt: skip
SCENE_KEYS = ("weather", "scene", "timeofday")


def read_bdd100k(labels: str | Path, images: str | Path, report: Report) -> SourceData:
    """Parse BDD100K labels into source records (image sizes from headers).

    Args:
        labels: The official label JSON, a per-image JSON, or a folder of either.
        images: The image folder that frame names are relative to.
        report: Receives file- and entry-level problems.

    Raises:
        DriveMTLError: When ``labels`` is missing, or a single label file is malformed.
    """
    labels = Path(labels)
    image_root = require_dir(images, "Image")
    if labels.is_dir():
        files = sorted(labels.glob("*.json"))
        if not files:
            raise DriveMTLError(f"No .json label files in {labels}")
    elif labels.is_file():
        files = [labels]
    else:
        raise DriveMTLError(f"BDD100K labels not found: {labels}")

    records: list[SourceImage] = []
    seen: dict[str, str] = {}
    non_box = 0
    for path in files:
        if len(files) == 1:
            data = load_json(path, "BDD100K labels")  # the whole conversion: fatal
        else:
            try:
                data = load_json(path, "BDD100K labels")
            except DriveMTLError as e:
                report.skip(path, "", "malformed file", str(e))
                continue
        for entry, frame, objects in _frames(path, data, report):
            name = frame.get("name")
            if not isinstance(name, str) or not name:
                report.skip(path, entry, "malformed frame", "no 'name'")
                continue
            if name in seen:
                report.skip(path, entry, "duplicate image name", f"{name} (first in {seen[name]})")
                continue
            seen[name] = f"{path} {entry}"
            record = SourceImage(_image_path(image_root, name), str(path), entry)
            for k, label in enumerate(objects or []):
                if not isinstance(label, dict) or not isinstance(label.get("category"), str):
                    record = None
                    report.skip(
                        path, f"{entry}, label {k}", "malformed label", f"no 'category': {label!r}"
                    )
                    break
                box2d = label.get("box2d")
                if box2d is None:
                    non_box += 1
                    continue
                box = None
                if isinstance(box2d, dict):
                    box = parse_box(box2d.get(key) for key in ("x1", "y1", "x2", "y2"))
                attributes = label.get("attributes") or {}
                crowd = isinstance(attributes, dict) and attributes.get("crowd") is True
                label_id = label.get("id", k)
                record.objects.append(
                    SourceObject(label["category"], box, f"label {label_id}", crowd)
                )
            if record is None:
                continue
            scene = frame.get("attributes")
            if isinstance(scene, dict):
                record.meta = {k: scene[k] for k in SCENE_KEYS if k in scene} or None
            records.append(record)
    if non_box:
        report.notes.append(f"{non_box} label(s) without box2d (lanes, drivable areas) not used")
    return SourceData(records, declared=set(BDD100K_CATEGORIES))


def _frames(path: Path, data: object, report: Report):
    """Yield ``(entry, frame, objects)`` for both BDD100K layouts."""
    if isinstance(data, list):
        for i, frame in enumerate(data):
            if not isinstance(frame, dict):
                report.skip(path, f"frame {i}", "malformed frame", "not a JSON object")
                continue
            yield f"frame {i} ({frame.get('name')})", frame, frame.get("labels")
    elif isinstance(data, dict) and "frames" in data:
        frames = data["frames"]
        if not isinstance(frames, list) or not frames or not isinstance(frames[0], dict):
            report.skip(path, "", "malformed file", "'frames' must be a list of objects")
            return
        yield "frames[0]", data, frames[0].get("objects")
    elif isinstance(data, dict) and "name" in data:
        yield "", data, data.get("labels")  # one frame of the official layout
    else:
        report.skip(
            path,
            "",
            "malformed file",
            "neither a list of frames nor a per-image file with 'frames'",
        )


def _image_path(root: Path, name: str) -> Path:
    path = root / name
    if path.suffix:
        return path
    # The 2018 per-image files name the frame without its extension.
    return find_image(root, name) or root / f"{name}.jpg"


def convert_bdd100k(
    labels: str | Path,
    images: str | Path,
    *,
    out: str | Path | None = None,
    options: ConvertOptions | None = None,
) -> Conversion:
    """Convert BDD100K labels (see :func:`read_bdd100k`)."""
    out = check_out(out)
    report = Report()
    return build_manifest("bdd100k", read_bdd100k(labels, images, report), report, options, out)
