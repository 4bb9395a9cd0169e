"""Source class names -> target classes: a default table per source, overridable by YAML or --map.

A source label maps to one of:

* a configured target class (``"car"``): its boxes become training boxes of that class;
* ``"ignore"``: its boxes become ``ignore`` regions (neither objects nor background);
* ``None`` (YAML ``null`` or ``--map NAME=``): not converted; counted in the summary.

Lookup order: explicit overrides (``--map``), then the YAML file, then the source's defaults, then
the identity (a source label equal to a target class after normalisation, e.g. ``"Traffic Light"``
-> ``traffic_light``), so user sets already named like the targets need no mapping at all.
Names are compared after normalisation (case, ``_``/``-``/spaces), so ``--map truck=car`` also
matches KITTI's ``Truck``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from drivemtl.errors import DriveMTLError

IGNORE = "ignore"
"""Mapping target that turns a source label's boxes into ignore regions."""

# Defaults per source. Only the four default targets are mapped; merging e.g. truck and bus into
# car is a modelling choice left to the user (--map truck=car --map bus=car).
_COCO = {
    "person": "pedestrian",
    "car": "car",
    "stop sign": "stop_sign",
    "traffic light": "traffic_light",
}
DEFAULT_MAPS: dict[str, dict[str, str | None]] = {
    "coco": dict(_COCO),
    # YOLO sets are mostly exported from COCO or from VOC-style sign sets; names decide.
    "yolo": {**_COCO, "trafficlight": "traffic_light", "stop": "stop_sign"},
    "voc": {
        "person": "pedestrian",
        "car": "car",
        "trafficlight": "traffic_light",
        "stop": "stop_sign",
    },
    "bdd100k": {
        "pedestrian": "pedestrian",
        "person": "pedestrian",  # the 2018 per-image JSON calls it person
        "car": "car",
        "traffic light": "traffic_light",
    },
    "kitti": {
        "pedestrian": "pedestrian",
        "car": "car",
        # The KITTI benchmark neither rewards nor penalises detections of these neighbouring
        # classes when evaluating Car / Pedestrian: ignore regions reproduce that.
        "van": IGNORE,
        "person sitting": IGNORE,
    },
    "cityscapes": {
        "person": "pedestrian",
        "car": "car",
        "traffic light": "traffic_light",
    },
}


def normalize(name: str) -> str:
    """Canonical form of a class name for comparisons (``Traffic_Light`` -> ``traffic light``)."""
    return " ".join(str(name).strip().lower().replace("_", " ").replace("-", " ").split())


@dataclass
class ClassMapping:
    """Resolved mapping for one conversion.

    Attributes:
        classes: The configured target classes, in order.
        table: Normalised source name -> target class, ``IGNORE`` or ``None`` (not converted).
    """

    classes: tuple[str, ...]
    table: dict[str, str | None] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        source: str,
        classes: Sequence[str],
        mapping_file: str | Path | None = None,
        overrides: Iterable[str] = (),
    ) -> ClassMapping:
        """Combine defaults, a YAML mapping file and ``SOURCE=TARGET`` overrides (later wins).

        Raises:
            DriveMTLError: A missing or malformed mapping file, or a target that is not a class.
        """
        mapping = cls(tuple(classes))
        mapping._update(DEFAULT_MAPS.get(source, {}), "built-in defaults", check=False)
        if mapping_file is not None:
            mapping._update(load_mapping_file(mapping_file), str(mapping_file))
        for item in overrides:
            if "=" not in item:
                raise DriveMTLError(
                    f"--map {item!r}: expected SOURCE=TARGET (e.g. --map truck=car; "
                    "TARGET 'ignore' makes ignore regions, an empty TARGET drops the label)"
                )
            source_name, target = item.split("=", 1)
            mapping._update({source_name: target}, f"--map {item}")
        return mapping

    def _update(self, entries: Mapping[str, object], origin: str, check: bool = True) -> None:
        for source_name, target in entries.items():
            if target is not None and not isinstance(target, str):
                raise DriveMTLError(
                    f"{origin}: target of {source_name!r} must be a class name, 'ignore' or "
                    f"null, got {target!r}"
                )
            target = (target or "").strip() or None
            if target is not None and target != IGNORE and target not in self.classes:
                if not check:
                    # A default towards a class the user removed from --classes: not converted.
                    target = None
                else:
                    raise DriveMTLError(
                        f"{origin}: {source_name!r} -> {target!r}, but {target!r} is not a "
                        f"configured class ({', '.join(self.classes)}). Add it with --classes, "
                        "or map to 'ignore', or to nothing to drop the label."
                    )
            self.table[normalize(source_name)] = target

    def target(self, source_name: str) -> str | None:
        """The target class, ``IGNORE``, or ``None`` when the label is not converted."""
        key = normalize(source_name)
        if key in self.table:
            return self.table[key]
        for name in self.classes:
            if normalize(name) == key:
                return name
        return None

    def annotated(self, source_names: Iterable[str]) -> list[str]:
        """Target classes that a source annotating ``source_names`` annotates, in class order."""
        reached = {self.target(name) for name in source_names}
        return [name for name in self.classes if name in reached]


def load_mapping_file(path: str | Path) -> dict[str, object]:
    """Read a YAML mapping: ``{source label: target class | ignore | null}``.

    A top-level ``map:`` key is also accepted, so one file can hold other notes beside it.

    Raises:
        DriveMTLError: When the file is missing, not YAML, or not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise DriveMTLError(f"Mapping file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise DriveMTLError(f"Mapping file {path} is not valid YAML: {e}") from None
    if isinstance(data, dict) and isinstance(data.get("map"), dict):
        data = data["map"]
    if not isinstance(data, dict):
        raise DriveMTLError(
            f"Mapping file {path} must be a YAML mapping 'source label: target class', "
            f"e.g. 'truck: car'; got {type(data).__name__}"
        )
    return {str(k): v for k, v in data.items()}
