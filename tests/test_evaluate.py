"""``drivemtl evaluate`` against hand-computed values, and its matching of image paths.

AP here is torchmetrics' (and ``drivemtl test``'s): the sum over distinct score thresholds,
highest first, of (recall gain) x precision, with tied scores entering together.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from drivemtl.cli import main
from drivemtl.evaluation import manifest_image, match_images
from tests.conftest import write_jsonl

CLASSES = ["car", "pedestrian", "stop_sign", "traffic_light"]
Q = "?"

# Six images: probability, label and decision per class.
CAR = {  # a tie at 0.8 between a positive and a negative; one unknown
    "scores": [0.9, 0.8, 0.8, 0.6, 0.3, 0.1],
    "labels": [1, 0, 1, 1, 0, Q],
    "present": [True, True, False, True, False, True],  # no single threshold gives these
}
PEDESTRIAN = {
    "scores": [0.95, 0.7, 0.4, 0.2, 0.65, 0.05],
    "labels": [1, 0, 1, 0, 0, 1],
    "present": [True, True, False, False, True, False],  # probability >= 0.6
}
STOP_SIGN = {  # labelled, never positive
    "scores": [0.1, 0.7, 0.2, 0.3, 0.1, 0.2],
    "labels": [0, 0, 0, 0, Q, Q],
    "present": [False, True, False, False, False, False],
}
TRAFFIC_LIGHT = {  # never labelled
    "scores": [0.5] * 6,
    "labels": [Q] * 6,
    "present": [False] * 6,
}
TABLE = dict(zip(CLASSES, (CAR, PEDESTRIAN, STOP_SIGN, TRAFFIC_LIGHT)))

EXPECTED = {
    # car, thresholds 0.9 / 0.8 / 0.6 / 0.3 over the 5 labelled images:
    #   TP,FP = 1,0 (P 1, R 1/3); 2,1 (P 2/3, R 2/3); 3,1 (P 3/4, R 1); 3,2 (P 3/5, R 1)
    #   AP = 1/3*1 + 1/3*2/3 + 1/3*3/4 + 0 = 29/36.
    # Decisions on labelled images: TP i0,i3; FP i1; FN i2 -> P = R = F1 = 2/3.
    "car": {
        "ap": 29 / 36,
        "f1": 2 / 3,
        "precision": 2 / 3,
        "recall": 2 / 3,
        "threshold": None,  # 0.8 is present on i1, absent on i2
        "positives": 3,
        "labelled": 5,
        "unknown": 1,
    },
    # pedestrian, ranked 0.95(1) 0.7(0) 0.65(0) 0.4(1) 0.2(0) 0.05(1):
    #   AP = 1/3*1 + 1/3*2/4 + 1/3*3/6 = 2/3.
    # Decisions: TP i0; FP i1,i4; FN i2,i5 -> P = R = 1/3, F1 = 2/(2+2+2) = 1/3.
    "pedestrian": {
        "ap": 2 / 3,
        "f1": 1 / 3,
        "precision": 1 / 3,
        "recall": 1 / 3,
        "threshold": 0.65,  # lowest probability decided present; all above it are present
        "positives": 3,
        "labelled": 6,
        "unknown": 0,
    },
    # No positive: AP, F1 and recall undefined (null, never 0); one false positive -> P = 0.
    "stop_sign": {
        "ap": None,
        "f1": None,
        "precision": 0.0,
        "recall": None,
        "threshold": 0.7,
        "positives": 0,
        "labelled": 4,
        "unknown": 2,
    },
    # All "?": nothing is defined.
    "traffic_light": {
        "ap": None,
        "f1": None,
        "precision": None,
        "recall": None,
        "threshold": None,
        "positives": 0,
        "labelled": 0,
        "unknown": 6,
    },
}


def _write_case(root: Path, extra_predictions=(), extra_manifest=()) -> tuple[Path, Path]:
    """Manifest in ``root/data`` (images under img/), predictions in ``root/pred``."""
    manifest, predictions = [], []
    for i in range(6):
        image = f"img/i{i}.png"
        manifest.append({"image": image, "presence": {c: TABLE[c]["labels"][i] for c in CLASSES}})
        predictions.append(
            {
                "image": image,
                "presence": {c: TABLE[c]["scores"][i] for c in CLASSES},
                "present": [c for c in CLASSES if TABLE[c]["present"][i]],
            }
        )
    (root / "data").mkdir(parents=True)
    (root / "pred").mkdir(parents=True)
    m = write_jsonl(root / "data" / "labels.jsonl", manifest + list(extra_manifest))
    p = write_jsonl(root / "pred" / "predictions.jsonl", predictions + list(extra_predictions))
    return p, m


def _evaluate(predictions: Path, manifest: Path, out: Path, *extra: str) -> int:
    args = [f"--predictions={predictions}", "--manifest", str(manifest), f"--output_dir={out}"]
    return main(["evaluate", *args, *extra])


def _assert_per_class(per_class: dict, expected: dict) -> None:
    for name, values in expected.items():
        for key, value in values.items():
            got = per_class[name][key]
            if value is None:
                assert got is None, (name, key, got)
            else:
                assert got == pytest.approx(value, abs=1e-6), (name, key)


def test_hand_computed_metrics(tmp_path, capsys):
    predictions, manifest = _write_case(tmp_path)
    out = tmp_path / "eval"
    assert _evaluate(predictions, manifest, out) == 0
    report = json.loads((out / "metrics.json").read_text())["presence"]
    _assert_per_class(report["per_class"], EXPECTED)
    assert report["map"] == pytest.approx((29 / 36 + 2 / 3) / 2)  # classes with an AP only

    # The table is printed and written to report.md, with every plot beside it.
    printed = capsys.readouterr().out
    assert "macro mAP" in printed and "traffic_light" in printed
    report_md = (out / "report.md").read_text()
    assert "| car | 0.806 | 0.667 | 0.667 | 0.667 | - | 3 | 5 | 1 |" in report_md
    assert "| traffic_light | - | - | - | - | - | 0 | 0 | 6 |" in report_md
    for name in ("ap_f1.png", *(f"pr_curves/{c}.png" for c in CLASSES)):
        assert (out / name).read_bytes()[:4] == b"\x89PNG", name
    matching = json.loads((out / "matching.json").read_text())
    assert matching["matched"] == 6 and matching["matched_by"]["relative path"] == 6


def test_stated_thresholds_are_reported_when_the_decisions_follow_them(tmp_path):
    predictions, manifest = _write_case(tmp_path)
    # run.json as drivemtl predict writes it: pedestrian's 0.6 explains its decisions,
    # car's 0.5 does not (0.1 decided present), so car falls back to its rule (null).
    info = {"thresholds": {"car": 0.5, "pedestrian": 0.6, "stop_sign": 0.7}}
    (predictions.parent / "run.json").write_text(json.dumps(info))
    out = tmp_path / "eval"
    assert _evaluate(predictions, manifest, out) == 0
    per_class = json.loads((out / "metrics.json").read_text())["presence"]["per_class"]
    assert per_class["pedestrian"]["threshold"] == 0.6
    assert per_class["stop_sign"]["threshold"] == 0.7
    assert per_class["car"]["threshold"] is None


def test_unmatched_and_duplicate_images_are_counted_not_dropped(tmp_path, capsys):
    stray = {"image": "img/stray.png", "presence": dict.fromkeys(CLASSES, 0.5), "present": []}
    again = {"image": "img/i0.png", "presence": dict.fromkeys(CLASSES, 0.0), "present": []}
    unseen = {"image": "img/unseen.png", "presence": dict.fromkeys(CLASSES, 1)}
    predictions, manifest = _write_case(tmp_path, [stray, again], [unseen])
    (predictions.parent / "errors.jsonl").write_text('{"image": "img/unseen.png", "error": "x"}\n')
    out = tmp_path / "eval"
    assert _evaluate(predictions, manifest, out, "--no_plots") == 0
    matching = json.loads((out / "matching.json").read_text())
    assert matching["matched"] == 6
    assert matching["predictions_without_manifest_entry"] == 1
    assert matching["lists"]["predictions_without_manifest_entry"] == ["img/stray.png"]
    assert matching["manifest_images_without_prediction"] == 1
    assert matching["lists"]["manifest_images_without_prediction"] == ["img/unseen.png"]
    assert matching["of_which_unreadable_at_predict"] == 1
    assert matching["duplicate_prediction_lines"] == 1
    printed = capsys.readouterr().out
    assert "1 manifest image(s) without a prediction" in printed
    assert "1 prediction(s) without a manifest entry: img/stray.png" in printed
    # The metrics are those of the six matched images; the first line of i0 counts.
    per_class = json.loads((out / "metrics.json").read_text())["presence"]["per_class"]
    _assert_per_class(per_class, EXPECTED)


def test_matching_rules(tmp_path):
    manifest_dir = tmp_path / "labels"
    items = [
        manifest_image(manifest_dir / rel, manifest_dir)
        for rel in ("cam_a/x.png", "cam_b/x.png", "day1/front/y.png", "z.png")
    ]
    # Same file name in two folders: ambiguous from the name alone ...
    result = match_images(["x.png", "other/y.png", "z.png", "nothing.png"], items)
    assert result.ambiguous_predictions == ["x.png"]
    assert sorted(result.pairs) == [(1, 2), (2, 3)]  # unique file names match
    assert result.by_rule["file name"] == 1 and result.by_rule["relative path"] == 1
    assert result.unmatched_predictions == ["nothing.png"]
    assert result.unmatched_manifest == [0, 1]
    # ... resolved by the predicted folder, or by a longer shared path.
    result = match_images(["x.png"], items, images_root=manifest_dir / "cam_b")
    assert result.pairs == [(0, 1)] and result.by_rule["same file"] == 1
    result = match_images(["cam_a/x.png", "front/y.png"], items)
    assert result.pairs == [(0, 0), (1, 2)] and result.by_rule["path suffix"] == 1
    # A manifest entry is matched once: a second prediction for it is reported.
    result = match_images(["a/z.png", "b/z.png"], items)
    assert result.pairs == [(0, 3)] and result.taken_predictions == ["b/z.png"]


def test_manifest_classes_beyond_the_predictions_and_a_class_subset(tmp_path, capsys):
    predictions, _ = _write_case(tmp_path)
    # A CSV manifest with one class the predictions lack and no column for traffic_light.
    csv = tmp_path / "data" / "labels.csv"
    rows = ["image,car,pedestrian,stop_sign,truck"]
    for i in range(6):
        cells = [str(TABLE[c]["labels"][i]) for c in ("car", "pedestrian", "stop_sign")]
        rows.append(f"img/i{i}.png,{','.join(cells)},1")
    csv.write_text("\n".join(rows) + "\n")
    out = tmp_path / "eval"
    assert _evaluate(predictions, csv, out, "--classes=car,traffic_light", "--no_plots") == 0
    per_class = json.loads((out / "metrics.json").read_text())["presence"]["per_class"]
    assert list(per_class) == ["car", "traffic_light"]
    _assert_per_class(per_class, {k: EXPECTED[k] for k in per_class})
    matching = json.loads((out / "matching.json").read_text())
    assert matching["manifest_classes_not_predicted"] == ["truck"]
    assert matching["evaluated_classes_not_in_manifest"] == ["traffic_light"]
    assert "not evaluated): truck" in capsys.readouterr().out


def test_bad_inputs_are_clear_errors(tmp_path, capsys):
    predictions, manifest = _write_case(tmp_path)
    lines = predictions.read_text().splitlines()
    bad = json.loads(lines[2])
    bad["presence"]["car"] = 1.7
    lines[2] = json.dumps(bad)
    lines[4] = '{"image": "img/i4.png", "presence": {"car": 0.1}, "present": []}'
    broken = tmp_path / "broken.jsonl"
    broken.write_text("\n".join(lines) + "\n")
    assert _evaluate(broken, manifest, tmp_path / "e1") == 2
    err = capsys.readouterr().err
    assert f"{broken}:3: 'presence' of ['car'] is not a probability" in err
    assert f"{broken}:5: 'presence' has classes" in err and "Traceback" not in err
    # A malformed JSON line is one more problem, listed with the others.
    lines[1] = '{"image": "img/i1.png", '
    broken.write_text("\n".join(lines) + "\n")
    assert _evaluate(broken, manifest, tmp_path / "e1") == 2
    err = capsys.readouterr().err
    assert f"{broken}:2: malformed JSON" in err and f"{broken}:3: 'presence' of ['car']" in err

    assert _evaluate(predictions, manifest, tmp_path / "e2", "--classes=truck") == 2
    assert "truck" in capsys.readouterr().err
    elsewhere = write_jsonl(tmp_path / "other.jsonl", [{"image": "a.png", "presence": {"car": 1}}])
    assert _evaluate(predictions, elsewhere, tmp_path / "e3") == 2
    assert "No prediction matched a manifest image" in capsys.readouterr().err
    assert _evaluate(tmp_path / "missing.jsonl", manifest, tmp_path / "e4") == 2
    assert "Predictions file not found" in capsys.readouterr().err

    # An output "folder" that is a file.
    assert _evaluate(predictions, manifest, manifest) == 2
    assert "is a file; give a folder" in capsys.readouterr().err

    # Presence on some lines only: the file mixes two systems' outputs.
    lines = predictions.read_text().splitlines()
    lines[1] = json.dumps({"image": json.loads(lines[1])["image"]})
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("\n".join(lines) + "\n")
    assert _evaluate(mixed, manifest, tmp_path / "e5") == 2
    assert f"{mixed}:2: 'presence' is missing or extra: line 1 has 'presence'" in (
        capsys.readouterr().err
    )
    # Presence that is not an object on line 1: a message, not a traceback.
    null = write_jsonl(tmp_path / "null.jsonl", [{"image": "img/i0.png", "presence": None}])
    assert _evaluate(null, manifest, tmp_path / "e7") == 2
    err = capsys.readouterr().err
    assert f"{null}:1: 'presence' must be an object" in err and "Traceback" not in err
    # No presence, and the manifest has no boxes or depth: nothing can be scored.
    bare = write_jsonl(tmp_path / "bare.jsonl", [{"image": "img/i0.png"}])
    assert _evaluate(bare, manifest, tmp_path / "e6") == 2
    err = capsys.readouterr().err
    assert "Nothing to evaluate: no task" in err and str(bare) in err and "Traceback" not in err


def test_bad_prediction_lines_are_reported_together_in_line_order(tmp_path):
    from drivemtl.errors import DriveMTLError
    from drivemtl.evaluation.predictions import read_predictions

    path = tmp_path / "predictions.jsonl"
    lines = ['{"image": "a.png"}', "{not json", '{"image": ""}', "[1]", '{"image": "b.png"}']
    path.write_text("\n".join(lines) + "\n")
    predictions = read_predictions(path)
    assert predictions.images == ["a.png", "b.png"] and predictions.lines == [1, 5]
    with pytest.raises(DriveMTLError) as error:
        predictions.check()
    listed = [line for line in str(error.value).splitlines() if line.startswith("  ")]
    numbers = [re.search(r"\.jsonl:(\d+): ", line).group(1) for line in listed]
    assert numbers == ["2", "3", "4"]  # JSON, image, JSON
    assert "malformed JSON" in listed[0] and "'image'" in listed[1] and "object" in listed[2]


def test_the_jsonl_reader_files_each_bad_line_under_its_number(tmp_path):
    from drivemtl.jsonl import iter_objects

    path = tmp_path / "p.jsonl"
    path.write_text('{"a": 1}\n\n[2]\n{"b": 3}\n{bad\n')
    problems: list = []
    assert [n for n, _ in iter_objects(path, problems)] == [1, 4]  # the blank line 2 is skipped
    assert [n for n, _ in problems] == [3, 5]
    assert problems[0][1] == f"  {path}:3: expected a JSON object per line"
