"""Tests of the data layer: every FER2013 form, bad inputs, the cache, FER+, statistics, real data."""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ferkit.data.loader as loader
from ferkit.classes import CLASS_NAMES
from ferkit.data import FerDataset, class_weights, dataset_info, load_dataset, resolve_data_path
from ferkit.data.csv_reader import read_csv
from ferkit.data.folder_reader import read_image_folders
from ferkit.errors import FerkitError

# Exact per-split class counts of the real FER2013 (/work/shared/data/README.md): the ground truth.
REAL_COUNTS = {
    "Training": [3995, 436, 4097, 7215, 4830, 3171, 4965],
    "PublicTest": [467, 56, 496, 895, 653, 415, 607],
    "PrivateTest": [491, 55, 528, 879, 594, 416, 626],
}
GOOD = " ".join(["7"] * 2304)  # a valid pixel field


def assert_rows(ds: FerDataset, rows, indices=None) -> None:
    """The dataset holds exactly the generated rows, in order."""
    assert ds.images.dtype == np.uint8 and ds.images.shape == rows.images.shape
    np.testing.assert_array_equal(ds.images, rows.images)
    np.testing.assert_array_equal(ds.labels, rows.labels)
    assert ds.labels.dtype == np.int64
    assert ds.splits.tolist() == rows.splits.tolist()
    expected = np.arange(len(rows.images)) if indices is None else indices
    np.testing.assert_array_equal(ds.indices, expected)


def write_lines(path, *lines: str, newline: str = "\n"):
    path.write_text(newline.join(lines) + newline, encoding="utf-8")
    return path


# ---------------------------------------------------------------- CSV forms


@pytest.mark.parametrize("name", ["fer2013.csv", "fer2013.csv.gz"])
def test_fer2013_csv_round_trip(tmp_path, make_fer_csv, name):
    rows = make_fer_csv(tmp_path / name)
    ds = load_dataset(rows.path)
    assert_rows(ds, rows)
    assert ds.split_names() == ["Training", "PublicTest", "PrivateTest"]
    assert ds.notes == []
    assert ds.source == str(rows.path)


def test_gzip_detected_by_content_not_name(tmp_path, make_fer_csv):
    rows = make_fer_csv(tmp_path / "x.csv.gz")
    renamed = rows.path.rename(tmp_path / "data.csv")
    assert_rows(read_csv(renamed), rows)


def test_icml_face_data_columns_with_spaces_and_other_order(tmp_path, make_fer_csv):
    rows = make_fer_csv(tmp_path / "icml_face_data.csv", columns=("emotion", " Usage", " pixels"))
    assert rows.path.read_text().startswith("emotion, Usage, pixels\n")
    assert_rows(load_dataset(rows.path), rows)


def test_train_csv_is_training(tmp_path, make_fer_csv):
    rows = make_fer_csv(tmp_path / "train.csv", n_per_split=(21,), columns=("emotion", "pixels"))
    ds = load_dataset(rows.path)
    assert_rows(ds, rows)
    assert set(ds.splits) == {"Training"}


def test_test_csv_is_unlabelled_test_split(tmp_path, make_fer_csv):
    rows = make_fer_csv(tmp_path / "test.csv", n_per_split=(5,), columns=("pixels",))
    ds = load_dataset(rows.path)
    assert_rows(ds, rows)
    assert ds.split_names() == ["test"] and (ds.labels == -1).all()
    with pytest.raises(FerkitError, match="no labelled rows in split 'test'"):
        ds.split("test", labelled_only=True)


def test_kaggle_folder_train_and_test(tmp_path, make_fer_csv):
    train = make_fer_csv(tmp_path / "kaggle" / "train.csv", n_per_split=(14,), columns=("emotion", "pixels"))
    test = make_fer_csv(tmp_path / "kaggle" / "test.csv", n_per_split=(4,), columns=("pixels",), seed=1)
    ds = load_dataset(tmp_path / "kaggle")
    assert len(ds) == 18
    np.testing.assert_array_equal(ds.images, np.concatenate([train.images, test.images]))
    np.testing.assert_array_equal(ds.labels, np.concatenate([train.labels, [-1] * 4]))
    assert ds.splits.tolist() == ["Training"] * 14 + ["test"] * 4
    np.testing.assert_array_equal(ds.indices, [*range(14), *range(4)])  # each file's own rows
    assert ds.split("Training", labelled_only=True).labels.tolist() == train.labels.tolist()


def test_kaggle_folder_prefers_icml_face_data(tmp_path, make_fer_csv):
    icml = make_fer_csv(tmp_path / "k" / "icml_face_data.csv", columns=("emotion", " Usage", " pixels"))
    make_fer_csv(tmp_path / "k" / "train.csv", n_per_split=(7,), columns=("emotion", "pixels"), seed=1)
    make_fer_csv(tmp_path / "k" / "test.csv", n_per_split=(3,), columns=("pixels",), seed=2)
    assert_rows(load_dataset(tmp_path / "k"), icml)


@pytest.mark.parametrize("name", ["fer2013.csv", "fer2013.csv.gz"])
def test_folder_holding_fer2013_csv(tmp_path, make_fer_csv, name):
    rows = make_fer_csv(tmp_path / "d" / name)
    (tmp_path / "d" / "README.txt").write_text("not data")
    assert_rows(load_dataset(tmp_path / "d"), rows)


def test_crlf_quoted_pixels_bom_and_blank_lines(tmp_path, make_fer_csv):
    rows = make_fer_csv(tmp_path / "fer2013.csv", newline="\r\n", quote_pixels=True)
    raw = rows.path.read_bytes()
    assert b'\r\n0,"' in raw
    rows.path.write_bytes(b"\xef\xbb\xbf" + raw + b"\r\n\r\n")  # BOM (Excel) and trailing blank lines
    assert_rows(load_dataset(rows.path), rows)


def test_quoted_header_and_fields_and_last_line_without_newline(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text(f'"emotion","pixels","Usage"\n"3","{GOOD}","PublicTest"\n5,{GOOD},PrivateTest')
    ds = read_csv(path)
    assert ds.labels.tolist() == [3, 5] and ds.splits.tolist() == ["PublicTest", "PrivateTest"]
    assert (ds.images == 7).all()


def test_select_and_split(tmp_path, make_fer_csv):
    ds = load_dataset(make_fer_csv(tmp_path / "f.csv").path)
    pub = ds.split("PublicTest")
    assert len(pub) == 7 and set(pub.splits) == {"PublicTest"} and pub.indices.tolist() == list(range(14, 21))
    assert len(ds.split("all")) == 28
    with pytest.raises(FerkitError, match="no rows in split 'test'"):
        ds.split("test")


# ---------------------------------------------------------------- image folders


def save_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return array


def test_image_folders_classes_by_name_synonyms_and_splits(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "faces"
    # (split folder, class folder, expected label); Neutral is 6, not its alphabetical place 4
    layout = [
        ("train", "Anger", 0),
        ("train", "disgusted", 1),
        ("train", "fear", 2),
        ("train", "happiness", 3),
        ("train", "Sad", 4),
        ("train", "SURPRISED", 5),
        ("train", "Neutral", 6),
        ("validation", "happy", 3),
        ("validation", "neutral", 6),
        ("test", "angry", 0),
        ("test", "neutral", 6),
    ]
    expected = []
    for split_dir, class_dir, label in layout:
        img = rng.integers(0, 256, (48, 48), dtype=np.uint8)
        save_png(root / split_dir / class_dir / "img_a.png", img)
        expected.append((label, split_dir, img))
    ds = load_dataset(root)
    assert len(ds) == len(layout)
    got = {
        (int(lab), str(sp), ds.images[i].tobytes())
        for i, (lab, sp) in enumerate(zip(ds.labels, ds.splits, strict=True))
    }
    split_of = {"train": "Training", "validation": "PublicTest", "test": "PrivateTest"}  # test = private
    assert got == {(lab, split_of[s], img.tobytes()) for lab, s, img in expected}
    np.testing.assert_array_equal(ds.indices, np.arange(len(ds)))
    assert ds.notes == []


def test_image_folders_train_test_only_keep_test_labelled(tmp_path):
    save_png(tmp_path / "train" / "happy" / "1.png", np.zeros((48, 48), np.uint8))
    save_png(tmp_path / "test" / "sad" / "2.png", np.full((48, 48), 9, np.uint8))
    ds = load_dataset(tmp_path)
    assert sorted(zip(ds.splits.tolist(), ds.labels.tolist(), strict=True)) == [("Training", 3), ("test", 4)]


def test_image_folder_jpg_and_exact_png_pixels(tmp_path):
    png = save_png(tmp_path / "train" / "neutral" / "a.png", np.arange(2304, dtype=np.uint8).reshape(48, 48))
    smooth = np.tile(np.linspace(40, 200, 48).astype(np.uint8), (48, 1))
    save_png(tmp_path / "test" / "happy" / "b.jpg", smooth)
    ds = load_dataset(tmp_path)
    np.testing.assert_array_equal(ds.images[(ds.splits == "Training")][0], png)  # lossless: exact
    jpg = ds.images[ds.splits == "test"][0].astype(int)
    assert np.abs(jpg - smooth).mean() < 3  # lossy, but the same picture
    assert dict(zip(ds.splits.tolist(), ds.labels.tolist(), strict=True)) == {"Training": 6, "test": 3}


def test_file_names_keep_their_official_split(tmp_path):
    for name in ("PublicTest_1.png", "PrivateTest_2.png", "Training_3.png", "face_4.png"):
        save_png(tmp_path / "train" / "fear" / name, np.zeros((48, 48), np.uint8))
    ds = read_image_folders(tmp_path)
    by_name = dict(
        zip(["PrivateTest_2", "PublicTest_1", "Training_3", "face_4"], ds.splits.tolist(), strict=True)
    )
    assert by_name == {
        "PrivateTest_2": "PrivateTest",
        "PublicTest_1": "PublicTest",
        "Training_3": "Training",
        "face_4": "Training",
    }
    assert (ds.labels == 2).all()


def test_colour_and_resized_images_converted_with_notes(tmp_path):
    rgb = np.zeros((48, 48, 3), np.uint8)
    rgb[..., 0] = 255  # pure red
    save_png(tmp_path / "happy" / "colour.png", rgb)
    save_png(tmp_path / "happy" / "big.png", np.full((96, 96), 100, np.uint8))
    save_png(tmp_path / "happy" / "ok.png", np.full((48, 48), 5, np.uint8))
    (tmp_path / "happy" / "notes.txt").write_text("ignored: not an image")
    ds = load_dataset(tmp_path)  # root holds the class folders itself: all Training
    assert len(ds) == 3 and set(ds.splits) == {"Training"} and (ds.labels == 3).all()
    assert ds.images.shape == (3, 48, 48)
    big, colour, ok = ds.images  # sorted by file name
    assert (big == 100).all() and (ok == 5).all()
    assert colour.std() == 0 and 60 < colour[0, 0] < 90  # ITU-R 601 luma of red is 76
    assert "converted 1 colour images to grayscale" in ds.notes
    assert "resized 1 images to 48x48" in ds.notes


# ---------------------------------------------------------------- bad inputs


BAD_CSVS = {
    # name: (file lines, expected message parts)
    "pixel_count": (
        ["emotion,pixels,Usage", f"0,{GOOD},Training", "1,1 2 3,Training"],
        ["line 3", "found 3"],
    ),
    "non_numeric": (["emotion,pixels,Usage", f"0,7 7 7 x{GOOD[5:]},Training"], ["line 2", "pixel 4 is 'x'"]),
    "pixel_256": (["emotion,pixels,Usage", f"0,256{GOOD[1:]},Training"], ["line 2", "pixel 1 is '256'"]),
    "pixel_overflow": (
        ["emotion,pixels,Usage", f"0,{GOOD[:-1]}4294967296,Training"],
        ["line 2", "pixel 2304"],
    ),
    "pixel_negative": (["emotion,pixels,Usage", f"0,-1{GOOD[1:]},Training"], ["line 2", "pixel 1 is '-1'"]),
    "pixel_float": (["emotion,pixels,Usage", f"0,7.5{GOOD[1:]},Training"], ["line 2", "pixel 1 is '7.5'"]),
    "pixels_empty": (["emotion,pixels,Usage", "0,,Training"], ["line 2", "found 0"]),
    "label_7": (
        ["emotion,pixels,Usage", f"0,{GOOD},Training", f"7,{GOOD},Training"],
        ["line 3", "'7'", "0-6"],
    ),
    "label_negative": (["emotion,pixels,Usage", f"-1,{GOOD},Training"], ["line 2", "emotion '-1'"]),
    "label_text": (["emotion,pixels,Usage", f"happy,{GOOD},Training"], ["line 2", "emotion 'happy'"]),
    "label_unicode_digit": (["emotion,pixels,Usage", f"\u00b2,{GOOD},Training"], ["line 2", "emotion"]),
    "usage": (["emotion,pixels,Usage", f"0,{GOOD},Validation"], ["line 2", "Usage 'Validation'"]),
    "extra_field": (["emotion,pixels,Usage", f"0,{GOOD},Training,x"], ["line 2", "expected 3 fields"]),
    "missing_field": (["emotion,pixels,Usage", f"0,{GOOD}"], ["line 2", "expected 3 fields"]),
    "no_pixels_column": (
        ["emotion,image,Usage", f"0,{GOOD},Training"],
        ["no 'pixels' column", "emotion, image"],
    ),
    "usage_no_emotion": (["pixels,Usage", f"{GOOD},Training"], ["'Usage' column but no 'emotion'"]),
    "header_only": (["emotion,pixels,Usage"], ["no usable rows"]),
    "empty": ([""], ["file is empty"]),
}


def write_bad(tmp_path, case: str):
    """The bad file `case` names, and the message parts its error must hold (the file's path first)."""
    if case in BAD_CSVS:
        lines, parts = BAD_CSVS[case]
        path = write_lines(tmp_path / f"{case}.csv", *lines)
    elif case == "truncated_gz":
        path = tmp_path / "fer2013.csv.gz"
        full = gzip.compress(("emotion,pixels,Usage\n" + f"0,{GOOD},Training\n" * 50).encode())
        path.write_bytes(full[: len(full) // 2])
        parts = ["truncated or corrupt gzip"]
    elif case == "png_renamed_csv":
        path = tmp_path / "fer2013.csv"
        buf = io.BytesIO()
        Image.fromarray(np.zeros((48, 48), np.uint8)).save(buf, "PNG")
        path.write_bytes(buf.getvalue())
        parts = ["not a CSV file"]
    elif case == "binary_no_nul":
        path = tmp_path / "fer2013.csv"
        path.write_bytes(bytes(range(128, 256)) * 4)
        parts = ["not a CSV file"]
    elif case == "missing_path":
        path = tmp_path / "nowhere" / "fer2013.csv"
        parts = ["no such file or folder"]
    elif case == "no_class_folders":
        path = tmp_path / "faces"
        (path / "train").mkdir(parents=True)
        (path / "train" / "a.png").write_bytes(b"")
        parts = ["no class folders"]
    elif case == "unknown_class":
        path = tmp_path / "faces"
        save_png(path / "train" / "happy" / "a.png", np.zeros((48, 48), np.uint8))
        save_png(path / "train" / "smiling" / "b.png", np.zeros((48, 48), np.uint8))
        parts = ["unknown class folder 'smiling'", "smiling"]
    elif case == "corrupt_image":
        path = tmp_path / "faces"
        save_png(path / "train" / "happy" / "a.png", np.zeros((48, 48), np.uint8))
        (path / "train" / "happy" / "b.png").write_bytes(b"this is not a png")
        parts = ["b.png", "not a readable image"]
    elif case == "truncated_image":
        path = tmp_path / "faces"
        rng = np.random.default_rng(0)
        good = save_png(path / "train" / "sad" / "a.png", rng.integers(0, 256, (48, 48), dtype=np.uint8))
        buf = io.BytesIO()
        Image.fromarray(good).save(buf, "PNG")
        (path / "train" / "sad" / "b.png").write_bytes(buf.getvalue()[:200])
        parts = ["b.png", "not a readable image"]
    else:
        raise AssertionError(case)
    return path, parts


BAD_CASES = [
    *BAD_CSVS,
    "truncated_gz",
    "png_renamed_csv",
    "binary_no_nul",
    "missing_path",
    "no_class_folders",
    "unknown_class",
    "corrupt_image",
    "truncated_image",
]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_raises_ferkit_error_naming_file_and_line(tmp_path, case):
    path, parts = write_bad(tmp_path, case)
    with pytest.raises(FerkitError) as err:
        load_dataset(path)
    msg = str(err.value)
    assert "\n" not in msg
    assert str(path) in msg
    for part in parts:
        assert part in msg


@pytest.mark.parametrize(
    ("case", "n_bad", "n_left"),
    [("pixel_count", 1, 1), ("label_7", 1, 1), ("unknown_class", 1, 1), ("corrupt_image", 1, 1)],
)
def test_skip_bad_rows_skips_and_counts(tmp_path, case, n_bad, n_left):
    path, _ = write_bad(tmp_path, case)
    ds = load_dataset(path, skip_bad_rows=True)
    assert len(ds) == n_left
    assert any(f"skipped {n_bad} bad" in note for note in ds.notes), ds.notes


def test_skip_bad_rows_keeps_source_row_indices(tmp_path):
    lines = ["emotion,pixels,Usage", f"0,{GOOD},Training", f"9,{GOOD},Training", "1,1 2,Training"]
    lines += [f"2,{GOOD},PublicTest", f"3,{GOOD},Nope", f"4,{GOOD},PrivateTest"]
    ds = read_csv(write_lines(tmp_path / "f.csv", *lines), skip_bad_rows=True)
    assert ds.indices.tolist() == [0, 3, 5] and ds.labels.tolist() == [0, 2, 4]
    assert ds.notes == [
        f"skipped 3 bad rows (first: {tmp_path / 'f.csv'}: line 3: emotion '9' is not a label 0-6)"
    ]


def test_skip_bad_rows_all_bad_is_still_an_error(tmp_path):
    path = write_lines(tmp_path / "f.csv", "emotion,pixels,Usage", "0,1 2,Training")
    with pytest.raises(FerkitError, match="no usable rows"):
        read_csv(path, skip_bad_rows=True)


# ---------------------------------------------------------------- path resolution


def test_path_resolution_order(tmp_path, monkeypatch, make_fer_csv):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FERKIT_DATA", raising=False)
    with pytest.raises(FerkitError, match="no FER2013 data found: pass --data PATH, set FERKIT_DATA"):
        resolve_data_path()
    make_fer_csv(tmp_path / "data" / "fer2013.csv.gz")
    assert resolve_data_path() == Path("data/fer2013.csv.gz")
    make_fer_csv(tmp_path / "data" / "fer2013.csv")
    assert str(resolve_data_path()) == "data/fer2013.csv"  # plain CSV first
    env_file = make_fer_csv(tmp_path / "env.csv").path
    monkeypatch.setenv("FERKIT_DATA", "env.csv")  # relative to the cwd
    assert resolve_data_path().resolve() == env_file
    given = make_fer_csv(tmp_path / "given.csv").path
    assert resolve_data_path(given) == given
    monkeypatch.setenv("FERKIT_DATA", "gone.csv")
    with pytest.raises(FerkitError, match=r"gone.csv \(from FERKIT_DATA\): no such file or folder"):
        load_dataset()


# ---------------------------------------------------------------- cache


@pytest.fixture
def counted_reads(tmp_path, monkeypatch):
    """A fresh cache dir, and a list that grows by one path each time a CSV is really parsed."""
    monkeypatch.setenv("FERKIT_CACHE_DIR", str(tmp_path / "cache"))
    calls = []
    real = loader.read_csv

    def counting(path, skip_bad_rows=False):
        calls.append(path)
        return real(path, skip_bad_rows)

    monkeypatch.setattr(loader, "read_csv", counting)
    return calls


def test_cache_second_load_does_not_reparse(tmp_path, make_fer_csv, counted_reads):
    rows = make_fer_csv(tmp_path / "f.csv.gz")
    first = load_dataset(rows.path)
    second = load_dataset(rows.path)
    assert len(counted_reads) == 1
    assert_rows(second, rows)
    assert second.notes == first.notes and second.source == str(rows.path)
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    assert not list((tmp_path / "cache").glob("*.tmp"))
    load_dataset(rows.path, skip_bad_rows=True)  # another reader option: another entry
    assert len(counted_reads) == 2
    load_dataset(rows.path, cache=False)
    assert len(counted_reads) == 3


def test_cache_changed_content_is_reread(tmp_path, make_fer_csv, counted_reads):
    path = tmp_path / "f.csv"
    make_fer_csv(path, seed=0)
    load_dataset(path)
    rows = make_fer_csv(path, seed=1)  # same name, new pixels
    assert_rows(load_dataset(path), rows)
    assert len(counted_reads) == 2


def test_cache_of_skipped_rows_keeps_notes(tmp_path, counted_reads):
    path = write_lines(tmp_path / "f.csv", "emotion,pixels,Usage", f"0,{GOOD},Training", "1,x,Training")
    a = load_dataset(path, skip_bad_rows=True)
    b = load_dataset(path, skip_bad_rows=True)
    assert len(counted_reads) == 1 and a.notes == b.notes and "skipped 1 bad rows" in b.notes[0]
    copy = tmp_path / "copy.csv"
    copy.write_bytes(path.read_bytes())  # same content: a cache hit, but the note names this file
    c = load_dataset(copy, skip_bad_rows=True)
    assert len(counted_reads) == 1
    assert c.notes == [f"skipped 1 bad rows (first: {copy}: line 3: pixel 1 is 'x', not an integer 0-255)"]


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "wrong_arrays"])
def test_cache_corrupted_file_is_rebuilt(tmp_path, make_fer_csv, counted_reads, damage):
    rows = make_fer_csv(tmp_path / "f.csv")
    load_dataset(rows.path)
    (entry,) = (tmp_path / "cache").glob("*.npz")
    good = entry.read_bytes()
    if damage == "garbage":
        entry.write_bytes(b"\x00garbage" * 100)
    elif damage == "truncated":
        entry.write_bytes(good[: len(good) // 2])
    elif damage == "empty":
        entry.write_bytes(b"")
    else:
        np.savez(entry, images=np.zeros((2, 3), np.uint8))
    assert_rows(load_dataset(rows.path), rows)
    assert len(counted_reads) == 2
    assert_rows(load_dataset(rows.path), rows)  # the rebuilt entry is used again
    assert len(counted_reads) == 2


def test_unwritable_cache_only_costs_speed(tmp_path, make_fer_csv, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("FERKIT_CACHE_DIR", str(blocker / "cache"))
    rows = make_fer_csv(tmp_path / "f.csv")
    assert_rows(load_dataset(rows.path), rows)


def test_folder_cache_sees_new_files(tmp_path, counted_reads):
    save_png(tmp_path / "faces" / "happy" / "a.png", np.zeros((48, 48), np.uint8))
    assert len(load_dataset(tmp_path / "faces")) == 1
    save_png(tmp_path / "faces" / "sad" / "b.png", np.zeros((48, 48), np.uint8))
    assert load_dataset(tmp_path / "faces").labels.tolist() == [3, 4]


# ---------------------------------------------------------------- statistics


def test_class_weights_inverse_hand_computed():
    labels = np.array([0] * 6 + [1] * 3 + [2] + [-1] * 5)  # unlabelled rows ignored; classes 3-6 absent
    w = class_weights(labels, "inverse")
    # 1/n_c = 1/6, 1/3, 1 (sum 1.5) scaled to mean 1 over the 3 present classes: x 2
    np.testing.assert_allclose(w, [1 / 3, 2 / 3, 2, 0, 0, 0, 0], rtol=1e-6)
    assert w.dtype == np.float32 and w[:3].mean() == pytest.approx(1.0)


def test_class_weights_effective_hand_computed():
    labels = np.array([0] * 6 + [1] * 3 + [2])
    w = class_weights(labels, "effective", beta=0.5)
    # (1 - b) / (1 - b^n) = 32/63, 4/7 = 36/63, 1 = 63/63 (sum 131/63), scaled to mean 1: x 3 * 63/131
    np.testing.assert_allclose(w, [96 / 131, 108 / 131, 189 / 131, 0, 0, 0, 0], rtol=1e-6)
    balanced = class_weights(np.repeat(np.arange(7), 10), "effective")
    np.testing.assert_allclose(balanced, np.ones(7), rtol=1e-6)


def test_class_weights_none_and_errors():
    np.testing.assert_array_equal(class_weights(np.array([0, 0, 1]), "none"), np.ones(7))
    with pytest.raises(FerkitError, match="expected none, inverse or effective"):
        class_weights(np.array([0, 1]), "sqrt")
    for beta in (0.0, 1.0, 1.5):
        with pytest.raises(FerkitError, match="beta"):
            class_weights(np.array([0, 1]), "effective", beta=beta)


def test_dataset_info_duplicates_and_counts():
    rng = np.random.default_rng(0)
    a, b, c, d = (rng.integers(0, 256, (48, 48), dtype=np.uint8) for _ in range(4))
    blank = np.zeros((48, 48), np.uint8)
    # a x3 (same label), c x2 (labels 2 and 3: conflicting), b, d, blank once each
    images = np.stack([a, b, a, c, c, d, a, blank])
    labels = np.array([0, 1, 0, 2, 3, 4, 0, -1])
    splits = np.array(["Training"] * 5 + ["PublicTest", "PrivateTest", "test"])
    ds = FerDataset(images, labels, splits, np.arange(8), source="mem")
    info = dataset_info(ds)
    assert info["duplicates"] == {
        "duplicate_rows": 3,
        "duplicate_groups": 2,
        "groups_with_conflicting_labels": 1,
    }
    assert info["total"] == 8 and info["source"] == "mem"
    assert list(info["splits"]) == ["Training", "PublicTest", "PrivateTest", "test"]
    assert info["splits"]["Training"] == {
        "total": 5,
        "unlabelled": 0,
        "classes": {"Angry": 2, "Disgust": 1, "Fear": 1, "Happy": 1, "Sad": 0, "Surprise": 0, "Neutral": 0},
    }
    assert info["splits"]["test"]["unlabelled"] == 1 and sum(info["splits"]["test"]["classes"].values()) == 0
    assert info["labels"] == {"labelled": 7, "unlabelled": 1}
    assert info["images"]["blank"] == 1 and info["images"]["shape"] == [48, 48]
    assert list(info["classes"]) == list(CLASS_NAMES)


def test_dataset_info_no_duplicates(tmp_path, make_fer_csv):
    info = dataset_info(load_dataset(make_fer_csv(tmp_path / "f.csv").path))
    assert info["duplicates"] == {
        "duplicate_rows": 0,
        "duplicate_groups": 0,
        "groups_with_conflicting_labels": 0,
    }


def test_dataset_rejects_inconsistent_arrays():
    with pytest.raises(ValueError, match="uint8"):
        FerDataset(np.zeros((2, 48, 48), np.float32), np.zeros(2), np.array(["Training"] * 2), np.arange(2))
    with pytest.raises(ValueError, match="labels has 1 rows"):
        FerDataset(np.zeros((2, 48, 48), np.uint8), np.zeros(1), np.array(["Training"] * 2), np.arange(2))


# ---------------------------------------------------------------- FER+ on small files


def ferplus_lines(usages, votes):
    header = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"
    return [header] + [
        f"{u},fer{i:07d}.png,{','.join(map(str, v))}"
        for i, (u, v) in enumerate(zip(usages, votes, strict=True))
    ]


def test_ferplus_on_small_file(tmp_path, make_fer_csv, monkeypatch):
    monkeypatch.delenv("FERKIT_FERPLUS", raising=False)
    rows = make_fer_csv(tmp_path / "fer2013.csv", n_per_split=(3, 1, 1))
    votes = [
        [4, 0, 0, 1, 3, 2, 0, 0, 0, 0],  # 4 of 9 after single votes go: no majority
        [0, 0, 0, 0, 0, 0, 7, 0, 3, 0],  # fear 7 of 10 -> Fear (2)
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 10],  # not a face
        [0, 1, 0, 0, 0, 6, 0, 0, 0, 3],  # disgust 6 of 9 (the single happiness vote dropped) -> 1
        [0, 0, 0, 0, 0, 0, 0, 8, 2, 0],  # contempt majority: no FER2013 class
    ]
    fp = write_lines(tmp_path / "fer2013new.csv", *ferplus_lines(rows.splits, votes))
    ds = load_dataset(rows.path, labels="ferplus")  # found beside the data
    assert ds.labels.tolist() == [-1, 2, -1, 1, -1]
    np.testing.assert_allclose(ds.soft_labels[1], [0, 0, 1, 0, 0, 0, 0])
    np.testing.assert_allclose(ds.soft_labels[0], np.array([3, 2, 0, 0, 0, 0, 4]) / 9, rtol=1e-6)
    assert ds.soft_labels[2].sum() == 0
    np.testing.assert_array_equal(ds.images, rows.images)
    assert any("3 rows without a FER2013-class majority" in n for n in ds.notes)
    assert ds.split("Training", labelled_only=True).labels.tolist() == [2]
    # explicit path beats $FERKIT_FERPLUS beats beside-the-data
    assert load_dataset(rows.path, labels="ferplus", ferplus=fp).labels.tolist() == [-1, 2, -1, 1, -1]
    # votes=True: the FER2013 labels stay, the vote distributions come along (zero rows: no 7-class votes)
    kept = load_dataset(rows.path, ferplus=fp, votes=True)
    np.testing.assert_array_equal(kept.labels, rows.labels)
    np.testing.assert_array_equal(kept.soft_labels, ds.soft_labels)
    assert any("2 rows have none" in n for n in kept.notes)


def test_ferplus_errors(tmp_path, make_fer_csv, monkeypatch):
    monkeypatch.delenv("FERKIT_FERPLUS", raising=False)
    rows = make_fer_csv(tmp_path / "fer2013.csv", n_per_split=(2, 1, 1))
    with pytest.raises(FerkitError, match="fer2013new.csv: FER\\+ labels file not found"):
        load_dataset(rows.path, labels="ferplus")
    with pytest.raises(FerkitError, match="expected fer2013 or ferplus"):
        load_dataset(rows.path, labels="fer+")
    votes = [[10, 0, 0, 0, 0, 0, 0, 0, 0, 0]] * 4
    swapped = write_lines(tmp_path / "swapped.csv", *ferplus_lines(["Training", "PublicTest"] * 2, votes))
    with pytest.raises(FerkitError, match=r"swapped.csv: line 3: Usage 'PublicTest' does not match"):
        load_dataset(rows.path, labels="ferplus", ferplus=swapped)
    short = write_lines(tmp_path / "short.csv", *ferplus_lines(["Training"] * 2, votes[:2]))
    monkeypatch.setenv("FERKIT_FERPLUS", str(short))
    with pytest.raises(FerkitError, match="short.csv: FER\\+ labels need the full fer2013.csv"):
        load_dataset(rows.path, labels="ferplus")
    not_fp = write_lines(tmp_path / "not_fp.csv", "a,b,c", "1,2,3")
    with pytest.raises(FerkitError, match="not_fp.csv: not a FER\\+ file"):
        load_dataset(rows.path, labels="ferplus", ferplus=not_fp)
    bad_votes = ferplus_lines(["Training"] * 4, votes)
    bad_votes[2] = bad_votes[2].replace(",10,", ",ten,")
    bad = write_lines(tmp_path / "bad_votes.csv", *bad_votes)
    with pytest.raises(FerkitError, match="bad_votes.csv: line 3: votes must be integers"):
        load_dataset(rows.path, labels="ferplus", ferplus=bad)
    test_rows = make_fer_csv(tmp_path / "test.csv", n_per_split=(4,), columns=("pixels",))
    ok = write_lines(tmp_path / "ok.csv", *ferplus_lines(["Training"] * 4, votes))
    with pytest.raises(FerkitError, match="FER\\+ labels need the full fer2013.csv"):
        load_dataset(test_rows.path, labels="ferplus", ferplus=ok)


# ---------------------------------------------------------------- the real data


def test_real_counts_match_readme_exactly(real_dataset):
    ds = real_dataset
    assert len(ds) == 35887
    assert ds.images.shape == (35887, 48, 48) and ds.images.dtype == np.uint8
    np.testing.assert_array_equal(ds.indices, np.arange(35887))
    for split, counts in REAL_COUNTS.items():
        got = np.bincount(ds.labels[ds.splits == split], minlength=7).tolist()
        assert got == counts, split
    info = dataset_info(ds)
    assert info["total"] == 35887 and info["labels"] == {"labelled": 35887, "unlabelled": 0}
    for split, counts in REAL_COUNTS.items():
        assert info["splits"][split]["total"] == sum(counts)
        assert list(info["splits"][split]["classes"].values()) == counts
    assert info["duplicates"]["groups_with_conflicting_labels"] > 0  # a known quirk of FER2013
    # the official row order: Training, then PublicTest, then PrivateTest
    assert ds.splits[0] == "Training" and ds.splits[28709] == "PublicTest" and ds.splits[-1] == "PrivateTest"


def test_real_first_rows_match_the_file(real_dataset, real_data_path):
    if real_data_path.is_dir():
        pytest.skip("FERKIT_DATA is a folder; this test reads the CSV itself")
    with gzip.open(real_data_path, "rt") if real_data_path.suffix == ".gz" else open(real_data_path) as f:
        reader = csv.DictReader(f)
        first = [next(reader) for _ in range(3)]
    for i, row in enumerate(first):
        assert real_dataset.labels[i] == int(row["emotion"]) and real_dataset.splits[i] == row["Usage"]
        np.testing.assert_array_equal(
            real_dataset.images[i].reshape(-1), np.array(row["pixels"].split(), int)
        )


def test_real_ferplus_labels(real_data_path, real_ferplus_path, real_dataset):
    ds = load_dataset(real_data_path, labels="ferplus", ferplus=real_ferplus_path)
    with open(real_ferplus_path) as f:
        votes = [row for row in csv.DictReader(f)]
    assert len(votes) == len(ds) == 35887
    np.testing.assert_array_equal(ds.images, real_dataset.images)
    # checked by hand against fer2013new.csv (FER+ columns: neutral,happiness,surprise,sadness,anger,...)
    assert votes[0]["neutral"] == "4" and votes[0]["anger"] == "3" and votes[0]["disgust"] == "2"
    assert ds.labels[0] == -1  # 4 / (4 + 3 + 2) after the single sadness vote goes: no majority
    assert votes[6]["sadness"] == "8" and ds.labels[6] == 4  # Sad
    assert votes[7]["happiness"] == "10" and ds.labels[7] == 3  # Happy
    assert votes[9]["surprise"] == "6" and votes[9]["fear"] == "4" and ds.labels[9] == 5  # Surprise
    assert votes[10]["anger"] == "8" and ds.labels[10] == 0  # Angry
    assert votes[11]["neutral"] == "10" and ds.labels[11] == 6  # Neutral
    not_face = np.array([row["NF"] == "10" for row in votes])
    assert not_face.sum() > 100 and (ds.labels[not_face] == -1).all()
    labelled = ds.labels >= 0
    np.testing.assert_allclose(ds.soft_labels[labelled].sum(1), 1.0, rtol=1e-5)
    assert (ds.soft_labels[labelled].argmax(1) == ds.labels[labelled]).all()
    assert 30000 < labelled.sum() < 35887
    assert ds.splits.tolist() == [row["Usage"] for row in votes]


def test_real_ferplus_rejects_other_data(tiny_real_csv, real_ferplus_path):
    # the tiny CSV's PublicTest rows sit where fer2013new.csv has Training rows
    with pytest.raises(FerkitError, match=r"line \d+: Usage 'Training' does not match .*not the FER\+ file"):
        load_dataset(tiny_real_csv, labels="ferplus", ferplus=real_ferplus_path)


def test_tiny_real_csv_has_every_class_in_every_split(tiny_real_csv):
    ds = load_dataset(tiny_real_csv)
    assert len(ds) == 980
    for split, per_class in (("Training", 100), ("PublicTest", 20), ("PrivateTest", 20)):
        assert np.bincount(ds.labels[ds.splits == split], minlength=7).tolist() == [per_class] * 7


def test_ferplus_file_given_as_data_says_so(tmp_path: Path) -> None:
    path = tmp_path / "fer2013new.csv"
    path.write_text(
        "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF\n"
    )
    with pytest.raises(FerkitError, match="FER\\+ label file.*--ferplus"):
        load_dataset(path)
