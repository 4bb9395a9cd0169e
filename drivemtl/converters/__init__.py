"""Converters from public annotation formats to the drivemtl manifest (see docs/converters.md).

Each ``convert_<format>`` returns a :class:`Conversion` (manifest entries, summary, problems)
without writing anything, so it can be used and tested without the command line;
:func:`main` is ``drivemtl convert``.
"""

from drivemtl.converters.base import (
    Conversion,
    ConvertOptions,
    Problem,
    SourceData,
    SourceImage,
    SourceObject,
    Summary,
    build_manifest,
)
from drivemtl.converters.bdd100k import convert_bdd100k
from drivemtl.converters.cityscapes import convert_cityscapes
from drivemtl.converters.cli import main
from drivemtl.converters.coco import convert_coco
from drivemtl.converters.kitti import convert_kitti
from drivemtl.converters.mapping import DEFAULT_MAPS, IGNORE, ClassMapping
from drivemtl.converters.voc import convert_voc
from drivemtl.converters.yolo import convert_yolo

FORMATS = ("coco", "yolo", "voc", "bdd100k", "kitti", "cityscapes")

__all__ = [
    "DEFAULT_MAPS",
    "FORMATS",
    "IGNORE",
    "ClassMapping",
    "ConvertOptions",
    "Conversion",
    "Problem",
    "SourceData",
    "SourceImage",
    "SourceObject",
    "Summary",
    "build_manifest",
    "convert_bdd100k",
    "convert_cityscapes",
    "convert_coco",
    "convert_kitti",
    "convert_voc",
    "convert_yolo",
    "main",
]
