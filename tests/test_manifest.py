"""Manifest parsing: formats, derivation rules, and one clear error per kind of bad row."""

from __future__ import annotations

import pytest
from PIL import Image

from drivemtl.data.manifest import ManifestError, read_manifest
from drivemtl.errors import DriveMTLError
from tests.conftest import CLASSES, write_image, write_jsonl


def test_csv_values_unknowns_and_relative_paths(tmp_path):
    write_image(tmp_path / "img" / "a.jpg")
    write_image(tmp_path / "img" / "b.jpg")
    (tmp_path / "m.csv").write_text(
        "image,pedestrian,car,stop_sign,traffic_light\nimg/a.jpg,1,0,?,1\nimg/b.jpg,0,1,1,\n"
    )
    records = read_manifest(tmp_path / "m.csv", CLASSES)
    assert [r.presence for r in records] == [(1, 0, -1, 1), (0, 1, 1, -1)]
    assert records[0].image == str(tmp_path / "img" / "a.jpg")
    assert records[0].boxes is None


def test_csv_missing_column_is_unknown(tmp_path):
    write_image(tmp_path / "a.jpg")
    (tmp_path / "m.csv").write_text("image,car\na.jpg,1\n")
    assert read_manifest(tmp_path / "m.csv", CLASSES)[0].presence == (-1, 1, -1, -1)


def test_jsonl_presence_derived_from_boxes_explicit_wins(tmp_path):
    write_image(tmp_path / "a.jpg", 100, 80)
    entries = [
        # stop_sign explicit "?", car derived 1 from its box, others derived 0.
        {"image": "a.jpg", "presence": {"stop_sign": "?"}, "boxes": [[1, 2, 30, 40, "car"]]},
        # No boxes, no presence: everything unknown.
        {"image": "a.jpg"},
        # Annotated with no object: every class 0; explicit 1 still wins.
        {"image": "a.jpg", "boxes": [], "presence": {"pedestrian": 1}},
        {"image": str(tmp_path / "a.jpg"), "boxes": None, "depth": None},
    ]
    records = read_manifest(write_jsonl(tmp_path / "m.jsonl", entries), CLASSES)
    assert records[0].presence == (0, 1, -1, 0)
    assert records[0].boxes == ((1.0, 2.0, 30.0, 40.0, 1),)
    assert records[1].presence == (-1, -1, -1, -1)
    assert records[2].presence == (1, 0, 0, 0) and records[2].boxes == ()
    assert records[3].presence == (-1, -1, -1, -1) and records[3].boxes is None


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"image": "a.jpg", "presence": {"truck": 1}}, "unknown class 'truck'"),
        ({"image": "a.jpg", "presence": {"car": 2}}, "presence of 'car' is 2"),
        ({"image": "missing.jpg"}, "image file not found"),
        ({"image": "a.jpg", "boxes": [[10, 10, 120, 20, "car"]]}, "outside the 100x80 image"),
        ({"image": "a.jpg", "boxes": [[30, 10, 20, 20, "car"]]}, "empty or inverted"),
        ({"image": "a.jpg", "boxes": [[float("nan"), 1, 9, 9, "car"]]}, "NaN and Infinity are not"),
        ({"image": "a.jpg", "boxes": [[1, 1, 5, 5, "bus"]]}, "unknown class 'bus'"),
        ({"image": "a.jpg", "depth": "nope.png"}, "depth file not found"),
        ({"image": "a.jpg", "labels": {}}, "unknown key(s) ['labels']"),
    ],
)
def test_jsonl_bad_row_names_file_line_and_problem(tmp_path, entry, message):
    write_image(tmp_path / "a.jpg", 100, 80)
    path = write_jsonl(tmp_path / "m.jsonl", [{"image": "a.jpg"}, entry])
    with pytest.raises(ManifestError) as info:
        read_manifest(path, CLASSES)
    text = str(info.value)
    assert f"{path}:2:" in text and message in text
    assert info.value.problems[0][0] == 2


def test_malformed_json_and_all_problems_reported_at_once(tmp_path):
    write_image(tmp_path / "a.jpg")
    path = tmp_path / "m.jsonl"
    path.write_text('{"image": "a.jpg"}\n{"image": "a.jpg",\n{"image": "b.jpg"}\n')
    with pytest.raises(ManifestError) as info:
        read_manifest(path, CLASSES)
    assert [line for line, _ in info.value.problems] == [2, 3]
    assert "malformed JSON" in info.value.problems[0][1]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("image,pedestrian,car\na.jpg,1,yes\n", "presence of 'car' is 'yes'"),
        ("image,pedestrian,truck\na.jpg,1,0\n", "unknown class column(s) ['truck']"),
        ("image,pedestrian\na.jpg,1,0\n", "3 cells, but the header has 2"),
        ("image,pedestrian\nb.jpg,1\n", "image file not found"),
        ("image,car,car\na.jpg,1,0\n", "column(s) ['car'] appear more than once"),
    ],
)
def test_csv_bad_rows(tmp_path, text, message):
    write_image(tmp_path / "a.jpg")
    (tmp_path / "m.csv").write_text(text)
    with pytest.raises(ManifestError, match="m.csv") as info:
        read_manifest(tmp_path / "m.csv", CLASSES)
    assert message in str(info.value)


def test_missing_or_empty_manifest(tmp_path):
    with pytest.raises(DriveMTLError, match="Manifest not found"):
        read_manifest(tmp_path / "none.jsonl", CLASSES)
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(DriveMTLError, match="no entries"):
        read_manifest(tmp_path / "e.jsonl", CLASSES)


def test_encodings_a_byte_order_mark_is_fine_latin1_is_a_clear_error(tmp_path):
    write_image(tmp_path / "a.jpg")
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbfimage,car\na.jpg,1\n")  # Excel's CSV UTF-8
    assert read_manifest(tmp_path / "bom.csv", CLASSES)[0].presence == (-1, 1, -1, -1)
    (tmp_path / "latin1.csv").write_bytes("image,car\nstra\u00dfe.jpg,1\n".encode("latin-1"))
    with pytest.raises(DriveMTLError, match=r"latin1.csv:2: not UTF-8 text"):
        read_manifest(tmp_path / "latin1.csv", CLASSES)


def test_boxes_are_checked_against_the_upright_image(tmp_path):
    # Stored 64 wide x 48 high, EXIF orientation 6: displayed (and trained on) 48 x 64.
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (64, 48)).save(tmp_path / "turned.jpg", exif=exif)
    upright = {"image": "turned.jpg", "boxes": [[2, 2, 40, 60, "car"]]}
    records = read_manifest(write_jsonl(tmp_path / "ok.jsonl", [upright]), CLASSES)
    assert records[0].boxes == ((2.0, 2.0, 40.0, 60.0, 1),)
    stored = {"image": "turned.jpg", "boxes": [[2, 2, 60, 40, "car"]]}
    with pytest.raises(ManifestError, match="outside the 48x64 image"):
        read_manifest(write_jsonl(tmp_path / "bad.jsonl", [stored]), CLASSES)


def test_explicit_zero_beside_a_box_wins_with_a_warning(tmp_path):
    write_image(tmp_path / "a.jpg", 100, 80)
    entry = {"image": "a.jpg", "presence": {"car": 0}, "boxes": [[1, 1, 5, 5, "car"]]}
    path = write_jsonl(tmp_path / "m.jsonl", [{"image": "a.jpg"}, entry])
    with pytest.warns(UserWarning, match=rf"1 manifest entr\(ies\) .*first: {path}:2, 'car'"):
        records = read_manifest(path, CLASSES)
    assert records[1].presence[1] == 0  # the contract: an explicit value wins
