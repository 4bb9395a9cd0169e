"""Detection metrics against COCO's 101-point AP computed by hand, with the partial-label rules
(unannotated images, unknown classes, ignore regions) and the DDP de-duplication."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from drivemtl.cli import main
from drivemtl.metrics.detection import DetectionMetric, ImageBoxes, detection_report
from tests.conftest import write_jsonl

CLASSES = ["pedestrian", "car", "stop_sign", "traffic_light"]
PED, CAR, SIGN, LIGHT = range(4)
ALL_KNOWN = [True] * 4


def _img(preds=(), gts=(), known=ALL_KNOWN, ignore=()) -> ImageBoxes:
    """preds: (x1, y1, x2, y2, label, score); gts: (x1, y1, x2, y2, label)."""
    return ImageBoxes(
        torch.tensor([p[:4] for p in preds], dtype=torch.float32).reshape(-1, 4),
        torch.tensor([p[5] for p in preds], dtype=torch.float32),
        torch.tensor([p[4] for p in preds], dtype=torch.long),
        torch.tensor([g[:4] for g in gts], dtype=torch.float32).reshape(-1, 4),
        torch.tensor([g[4] for g in gts], dtype=torch.long),
        torch.tensor(known),
        torch.tensor(ignore, dtype=torch.float32).reshape(-1, 4),
    )


def coco_ap_by_hand(recalls: list[float], precisions: list[float]) -> float:
    """COCO's 101-point AP: the precision envelope (max to the right) sampled where recall
    first reaches 0, 0.01, ..., 1 (0 beyond the last recall)."""
    envelope = [max(precisions[i:]) for i in range(len(precisions))]
    total = 0.0
    for k in range(101):
        r = k / 100
        reached = [i for i, rc in enumerate(recalls) if rc >= r - 1e-12]
        total += envelope[reached[0]] if reached else 0.0
    return total / 101


# Cars: image A has g1 and g2, image B has g3. Detections, best first:
#   d1 0.9 on g1 exactly (IoU 1)                  -> TP at every IoU threshold
#   d2 0.8 far from everything                    -> FP
#   d3 0.7 on g3 with IoU 0.62 (10x6.2 in 10x10)  -> TP up to IoU 0.60, FP from 0.65
#   d4 0.6 far from everything                    -> FP;  g2 is never found.
G1, G2, G3 = (0, 0, 20, 20), (50, 50, 70, 70), (0, 0, 10, 10)
IMAGE_A = _img(
    preds=[(*G1, CAR, 0.9), (100, 100, 120, 120, CAR, 0.8)],
    gts=[(*G1, CAR), (*G2, CAR)],
)
IMAGE_B = _img(
    preds=[(0, 0, 10, 6.2, CAR, 0.7), (30, 30, 40, 40, CAR, 0.6)],
    gts=[(*G3, CAR)],
)


def test_ap_matches_the_101_point_coco_definition_by_hand():
    # IoU 0.50, 0.55, 0.60: TP FP TP FP over 3 boxes -> recall 1/3 1/3 2/3 2/3, precision
    # 1 1/2 2/3 1/2; envelope 1 2/3 2/3 1/2: 34 recall points (0..0.33) at 1, 33 points
    # (0.34..0.66) at 2/3, 34 at 0 -> AP = (34 + 22) / 101.
    ap_low = coco_ap_by_hand([1 / 3, 1 / 3, 2 / 3, 2 / 3], [1, 1 / 2, 2 / 3, 1 / 2])
    assert ap_low == pytest.approx(56 / 101)
    # IoU 0.65 ... 0.95 (7 thresholds): only d1 is right -> 34 points at 1 -> AP = 34 / 101.
    ap_high = coco_ap_by_hand([1 / 3] * 4, [1, 1 / 2, 1 / 3, 1 / 4])
    assert ap_high == pytest.approx(34 / 101)

    report = detection_report([IMAGE_A, IMAGE_B], CLASSES, score_threshold=0.65)
    car = report["per_class"]["car"]
    assert car["ap50"] == pytest.approx(56 / 101, abs=1e-6)
    assert car["ap"] == pytest.approx((3 * 56 / 101 + 7 * 34 / 101) / 10, abs=1e-6)
    # Classes without ground truth: AP undefined, never 0.
    for name in ("pedestrian", "stop_sign", "traffic_light"):
        assert report["per_class"][name]["ap50"] is None
        assert report["per_class"][name]["ap"] is None
        assert report["per_class"][name]["recall"] is None
    # The mean is over classes with ground truth only.
    assert report["map50"] == pytest.approx(car["ap50"], abs=1e-6)
    assert report["map"] == pytest.approx(car["ap"], abs=1e-6)
    # At score >= 0.65: d1 TP, d2 FP, d3 TP (IoU 0.62 >= 0.5) -> precision 2/3, recall 2/3.
    assert (car["precision"], car["recall"], car["f1"]) == pytest.approx((2 / 3, 2 / 3, 2 / 3))
    assert (car["ground_truth"], car["detections"], car["images"]) == (3, 3, 2)
    assert report["score_threshold"] == 0.65 and report["images"] == 2


def test_unannotated_unknown_and_ignored_boxes_are_left_out():
    base = detection_report([IMAGE_A, IMAGE_B], CLASSES, score_threshold=0.65)
    # A high-scoring car on an image where car is unknown, and the image's car ground truth:
    # neither may count (it would be an FP ranked first and a missed box).
    unknown_car = _img(
        preds=[(0, 0, 9, 9, CAR, 0.95), (5, 5, 30, 30, SIGN, 0.9)],
        gts=[(60, 60, 80, 80, CAR), (5, 5, 30, 30, SIGN)],
        known=[True, False, True, True],
    )
    # A high-scoring car inside an ignore region: neither right nor wrong.
    in_crowd = _img(preds=[(10, 10, 20, 20, CAR, 0.99)], ignore=[(0, 0, 40, 40)])
    report = detection_report([IMAGE_A, unknown_car, IMAGE_B, in_crowd], CLASSES, 0.65)
    car = report["per_class"]["car"]
    for key in ("ap50", "ap", "precision", "recall", "ground_truth", "detections"):
        assert car[key] == pytest.approx(base["per_class"]["car"][key]), key
    assert car["images"] == 3  # A, B and the crowd image: car is annotated there
    # The stop sign of the unknown-car image is annotated and found: AP 1.
    sign = report["per_class"]["stop_sign"]
    assert sign["ap50"] == pytest.approx(1.0) and sign["precision"] == 1.0
    # Without the rules, the same boxes would lower the car's AP.
    naive = _img(preds=[(0, 0, 9, 9, CAR, 0.95)], gts=[(60, 60, 80, 80, CAR)])
    worse = detection_report([IMAGE_A, naive, IMAGE_B], CLASSES, 0.65)["per_class"]["car"]
    assert worse["ap50"] < car["ap50"] and worse["precision"] < car["precision"]


def test_undefined_values_are_none_not_zero():
    empty = detection_report([], CLASSES)
    assert empty["map50"] is None and empty["map"] is None and empty["images"] == 0
    assert all(m["ap50"] is None and m["precision"] is None for m in empty["per_class"].values())
    # Detections of a class without ground truth: AP undefined, precision 0 (all wrong).
    report = detection_report([_img(preds=[(0, 0, 5, 5, LIGHT, 0.9)])], CLASSES)
    light = report["per_class"]["traffic_light"]
    assert light["ap50"] is None and light["precision"] == 0.0 and light["recall"] is None
    assert report["map50"] is None
    # Ground truth without detections above the threshold: recall 0, precision undefined.
    report = detection_report([_img(gts=[(0, 0, 5, 5, PED)])], CLASSES)
    ped = report["per_class"]["pedestrian"]
    assert ped["ap50"] == 0.0 and ped["recall"] == 0.0 and ped["precision"] is None


def test_metric_counts_each_image_once_despite_padding_duplicates():
    metric = DetectionMetric(CLASSES, score_threshold=0.65)
    metric.update([IMAGE_A], torch.tensor([7]))
    # A distributed sampler pads the last rank with repeats of the first samples.
    metric.update([IMAGE_B, IMAGE_A], torch.tensor([3, 7]))
    images = metric.images()
    assert len(images) == 2
    assert torch.equal(images[0].gt_boxes, IMAGE_B.gt_boxes)  # ordered by dataset index
    assert metric.report() == detection_report([IMAGE_B, IMAGE_A], CLASSES, 0.65)


@pytest.mark.parametrize("with_presence", [True, False], ids=["with-presence", "boxes-only"])
def test_evaluate_scores_prediction_files_by_the_same_rules(tmp_path, capsys, with_presence):
    """`drivemtl evaluate` on hand-written files gives the hand-computed numbers above, also
    for a detection-only model's predictions (no ``presence``)."""

    def boxes(image: ImageBoxes, scores: bool) -> list:
        rows = []
        tensors = (
            (image.pred_boxes, image.pred_labels) if scores else (image.gt_boxes, image.gt_labels)
        )
        for i, (box, label) in enumerate(zip(*tensors)):
            row = [round(float(v), 4) for v in box] + [CLASSES[int(label)]]
            rows.append(row + [float(image.pred_scores[i])] if scores else row)
        return rows

    manifest = [
        {"image": "a.jpg", "boxes": boxes(IMAGE_A, False)},
        {"image": "b.jpg", "boxes": boxes(IMAGE_B, False)},
        # Car unknown here: its boxes (and the high-scoring car prediction) are left out.
        {"image": "c.jpg", "boxes": [[60, 60, 80, 80, "car"]], "presence": {"car": "?"}},
        # Not annotated for boxes: left out whatever is predicted.
        {"image": "d.jpg", "presence": {"car": 1}},
        # A crowd region: the car predicted inside it is neither right nor wrong.
        {"image": "e.jpg", "boxes": [], "ignore": [[0, 0, 40, 40]]},
    ]
    presence = {c: 0.5 for c in CLASSES}
    stray = [[0, 0, 9, 9, "car", 0.95]]
    predictions = [
        {"image": "a.jpg", "boxes": boxes(IMAGE_A, True)},
        {"image": "b.jpg", "boxes": boxes(IMAGE_B, True)},
        {"image": "c.jpg", "boxes": stray},
        {"image": "d.jpg", "boxes": stray},
        {"image": "e.jpg", "boxes": [[10, 10, 20, 20, "car", 0.99]]},
    ]
    if with_presence:
        for p in predictions:
            p.update(presence=presence, present=[])
    write_jsonl(tmp_path / "m.jsonl", manifest)
    write_jsonl(tmp_path / "predictions.jsonl", predictions)
    out = tmp_path / "eval"
    args = ["evaluate", f"--predictions={tmp_path / 'predictions.jsonl'}", "--no_plots"]
    code = main(
        [
            *args,
            f"--manifest={tmp_path / 'm.jsonl'}",
            f"--output_dir={out}",
            "--box_score_threshold=0.65",
        ]
    )
    assert code == 0
    report = json.loads((out / "metrics.json").read_text())
    assert ("presence" in report) == with_presence
    assert ("## Presence per class" in (out / "report.md").read_text()) == with_presence
    car = report["detection"]["per_class"]["car"]
    assert car["ap50"] == pytest.approx(56 / 101, abs=1e-6)
    assert car["ap"] == pytest.approx((3 * 56 / 101 + 7 * 34 / 101) / 10, abs=1e-6)
    assert (car["precision"], car["recall"]) == pytest.approx((2 / 3, 2 / 3))
    assert (car["ground_truth"], car["detections"], car["images"]) == (3, 3, 3)
    printed = capsys.readouterr().out
    assert "Detection: 4 matched image(s) are annotated for boxes." in printed
    assert "mean" in printed and "0.554" in printed


def _ddp_worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=2
    )
    extra = _img(preds=[(1, 1, 9, 9, SIGN, 0.8)], gts=[(0, 0, 10, 10, SIGN)])
    metric = DetectionMetric(CLASSES, score_threshold=0.65)
    if rank == 0:  # two images, seven boxes
        metric.update([IMAGE_A, extra], torch.tensor([0, 2]))
    else:  # one image and the sampler's padding: image 0 again
        metric.update([IMAGE_B], torch.tensor([1]))
        metric.update([IMAGE_A], torch.tensor([0]))
    report = metric.report()  # torchmetrics gathers both ranks' states first
    (Path(out_dir) / f"{rank}.json").write_text(json.dumps(report))
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_processes_gather_and_count_each_image_once(tmp_path):
    torch.multiprocessing.spawn(
        _ddp_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True
    )
    extra = _img(preds=[(1, 1, 9, 9, SIGN, 0.8)], gts=[(0, 0, 10, 10, SIGN)])
    expected = detection_report([IMAGE_A, IMAGE_B, extra], CLASSES, 0.65)
    assert expected["images"] == 3
    for rank in (0, 1):  # the same computation on the same gathered boxes: equal exactly
        assert json.loads((tmp_path / f"{rank}.json").read_text()) == expected


def test_evaluate_class_subsets_and_bad_boxes(tmp_path, capsys):
    manifest = write_jsonl(
        tmp_path / "m.jsonl",
        [{"image": "a.jpg", "boxes": [[0, 0, 10, 10, "car"], [20, 20, 30, 30, "pedestrian"]]}],
    )
    line = {"image": "a.jpg", "presence": {c: 0.5 for c in CLASSES}, "present": []}
    boxes = [[0, 0, 10, 10, "car", 0.9], [50, 50, 60, 60, "pedestrian", 0.9]]
    predictions = write_jsonl(tmp_path / "p.jsonl", [line | {"boxes": boxes}])
    args = ["evaluate", f"--predictions={predictions}", f"--manifest={manifest}", "--no_plots"]
    # A subset of classes: the other classes' boxes are not evaluated (and not an error).
    assert main([*args, f"--output_dir={tmp_path / 'e'}", "--classes=car"]) == 0
    detection = json.loads((tmp_path / "e" / "metrics.json").read_text())["detection"]
    assert list(detection["per_class"]) == ["car"] and detection["map50"] == pytest.approx(1.0)
    # A malformed box: exit 2 with the file, line and problem, no traceback.
    bad = write_jsonl(tmp_path / "bad.jsonl", [line | {"boxes": [[0, 0, 10, "car", 0.9]]}])
    capsys.readouterr()
    code = main(["evaluate", f"--predictions={bad}", f"--manifest={manifest}", "--no_plots"])
    err = capsys.readouterr().err
    assert code == 2 and f"{bad}:1: box [0, 0, 10, 'car', 0.9] is not [x1, y1, x2, y2" in err
    assert "Traceback" not in err
