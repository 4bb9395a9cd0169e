#!/usr/bin/env bash
# Convert the real dev sets of ../shared/data (see its README) and check the README's counts.
#
#   bash data_scripts/recipes/shared_dev.sh [DATA_DIR] [OUT_DIR]
#
# DATA_DIR defaults to <repo>/../shared/data, OUT_DIR to data/real. Set CONVERT to run the
# converters another way, e.g. CONVERT="python -m drivemtl.converters".
set -euo pipefail

REPO="$(cd "$(dirname "$0")/../.." && pwd)"
DATA="${1:-$REPO/../shared/data}"
OUT="${2:-data/real}"
CONVERT="${CONVERT:-drivemtl convert}"
COUNT="python $REPO/data_scripts/recipes/count_manifest.py"
mkdir -p "$OUT"

# COCO instances JSON: COCO annotates all 80 classes, so nothing is '?'.
$CONVERT coco --annotations "$DATA/coco128-train/annotations/instances.json" \
    --images "$DATA/coco128-train/images" --out "$OUT/coco128.jsonl"
$COUNT "$OUT/coco128.jsonl" --expect images=128 pedestrian=61 car=12 traffic_light=4 \
    stop_sign=2 'pedestrian?=0'

# The same images as YOLO txt: the 80 names are the COCO categories in id order.
python - "$DATA/coco128-train/annotations/instances.json" "$OUT/coco80.txt" <<'EOF'
import json, sys
cats = json.load(open(sys.argv[1]))["categories"]
open(sys.argv[2], "w").write("\n".join(c["name"] for c in sorted(cats, key=lambda c: c["id"])) + "\n")
EOF
$CONVERT yolo --labels "$DATA/coco128-train/labels_yolo" --images "$DATA/coco128-train/images" \
    --names "$OUT/coco80.txt" --out "$OUT/coco128_yolo.jsonl"
$COUNT "$OUT/coco128_yolo.jsonl" --expect images=128 pedestrian=61 car=12 traffic_light=4 stop_sign=2

# Pascal VOC road signs: pedestrian and car are not annotated there, so '?' on all 91 images.
$CONVERT voc --annotations "$DATA/roadsign-dev/annotations" --images "$DATA/roadsign-dev/images" \
    --out "$OUT/roadsign.jsonl"
$COUNT "$OUT/roadsign.jsonl" --expect images=91 traffic_light=52 stop_sign=46 \
    'pedestrian?=91' 'car?=91'

# KITTI with its sparse LiDAR depth; no traffic-light or stop-sign class: '?'.
$CONVERT kitti --labels "$DATA/kitti-dev/label_2" --images "$DATA/kitti-dev/image_2" \
    --depth "$DATA/kitti-dev/depth" --out "$OUT/kitti.jsonl"
$COUNT "$OUT/kitti.jsonl" --expect images=3 pedestrian=1 car=2 'stop_sign?=3' 'traffic_light?=3'
