"""Project KITTI object LiDAR sweeps into image_2 as sparse depth PNGs (uint16 metres x 256).

The KITTI object benchmark ships no depth maps; ``drivemtl convert kitti --depth DIR`` expects one
``<stem>.png`` per image in the manifest's depth format (0 = no measurement). This makes them
from ``velodyne/*.bin`` and ``calib/*.txt``, keeping the nearest point per pixel (about 4 % of
pixels end up valid, as in ``shared/data/kitti-dev/depth``).

Example:
    python data_scripts/recipes/kitti_velodyne_to_depth.py --root KITTI/object/training \\
        --out KITTI/object/training/depth
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

MAX_DEPTH_M = 65535 / 256  # the largest depth uint16 metres x 256 can hold


def read_calib(path: Path) -> dict[str, np.ndarray]:
    """``P2`` (3x4), ``R0_rect`` (3x3) and ``Tr_velo_to_cam`` (3x4) of a KITTI calib file."""
    values = {}
    for line in path.read_text().splitlines():
        key, sep, rest = line.partition(":")
        if sep and rest.strip():
            values[key.strip()] = np.array([float(v) for v in rest.split()])
    return {
        "P2": values["P2"].reshape(3, 4),
        "R0_rect": values["R0_rect"].reshape(3, 3),
        "Tr_velo_to_cam": values["Tr_velo_to_cam"].reshape(3, 4),
    }


def project(points: np.ndarray, calib: dict[str, np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """Sparse depth (float metres, 0 = none) of ``points`` (N x 3, velodyne frame) in image_2.

    Args:
        points: LiDAR points in the velodyne frame.
        calib: The output of :func:`read_calib`.
        size: ``(width, height)`` of image_2.
    """
    w, h = size
    homogeneous = np.hstack([points[:, :3], np.ones((len(points), 1))])
    cam = calib["R0_rect"] @ (calib["Tr_velo_to_cam"] @ homogeneous.T)  # 3 x N, rectified
    pix = calib["P2"] @ np.vstack([cam, np.ones((1, cam.shape[1]))])
    z = pix[2]  # depth along image_2's optical axis
    front = z > 0.1
    u = np.round(pix[0, front] / z[front]).astype(int)
    v = np.round(pix[1, front] / z[front]).astype(int)
    z = z[front]
    keep = (u >= 0) & (u < w) & (v >= 0) & (v < h) & (z <= MAX_DEPTH_M)
    u, v, z = u[keep], v[keep], z[keep]
    depth = np.zeros((h, w))
    order = np.argsort(-z)  # far first, so the nearest point of a pixel is written last
    depth[v[order], u[order]] = z[order]
    return depth


def encode(depth: np.ndarray) -> np.ndarray:
    """uint16 metres x 256, 0 where there is no measurement."""
    return np.where(depth > 0, np.clip(np.rint(depth * 256), 1, 65535), 0).astype(np.uint16)


def main(argv: list[str] | None = None) -> int:
    """Write ``OUT/<stem>.png`` for every ``ROOT/velodyne/<stem>.bin``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--root",
        type=Path,
        required=True,
        help="KITTI object split folder with velodyne/, calib/, image_2/",
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for the depth PNGs")
    args = parser.parse_args(argv)  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    sweeps = sorted((args.root / "velodyne").glob("*.bin"))
    if not sweeps:
        parser.error(f"no .bin files in {args.root / 'velodyne'}")
    for sweep in sweeps:
        points = np.fromfile(sweep, dtype=np.float32).reshape(-1, 4)
        calib = read_calib(args.root / "calib" / f"{sweep.stem}.txt")
        with Image.open(args.root / "image_2" / f"{sweep.stem}.png") as im:
            size = im.size
        depth = encode(project(points, calib, size))
        Image.fromarray(depth).save(args.out / f"{sweep.stem}.png")
    print(f"{len(sweeps)} depth PNG(s) written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
