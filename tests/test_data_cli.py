"""Tests of `ferkit data info|show|download`: output, path resolution, one-line errors (no tracebacks)."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
from conftest import assert_one_line_error
from PIL import Image
from test_data import BAD_CASES, REAL_COUNTS, write_bad

from ferkit.classes import CLASS_NAMES
from ferkit.cli import main


def assert_data_error(proc, *parts: str) -> str:
    """Exit 1, nothing on stdout, and one `ferkit: error:` line on stderr holding `parts`."""
    assert proc.stdout == ""
    return assert_one_line_error(proc, *parts, code=1)


# ---------------------------------------------------------------- bad inputs end in one line


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_one_line_error(tmp_path, run_ferkit, case):
    path, parts = write_bad(tmp_path, case)
    line = assert_data_error(run_ferkit("data", "info", path), str(path), *parts)
    assert line.startswith("ferkit: error: ")


@pytest.mark.parametrize("case", ["pixel_count", "png_renamed_csv", "unknown_class"])
def test_bad_input_one_line_error_in_show(tmp_path, run_ferkit, case):
    path, parts = write_bad(tmp_path, case)
    out = tmp_path / "grid.png"
    line = assert_data_error(run_ferkit("data", "show", path, "--out", out), *parts)
    assert line.startswith("ferkit: error: ") and not out.exists()


@pytest.mark.parametrize("flag", ["--skip-bad-rows", "--skip_bad_rows"])
def test_skip_bad_rows_option(tmp_path, run_ferkit, flag):
    path, _ = write_bad(tmp_path, "label_7")
    proc = run_ferkit("data", "info", path, flag)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert f"note: skipped 1 bad rows (first: {path}: line 3: emotion '7'" in proc.stdout
    assert "Training" in proc.stdout


@pytest.mark.parametrize(
    ("args", "part"),
    [
        (["data", "info", "--bogus"], "unrecognized arguments: --bogus"),
        (["data", "info", "--format", "xml"], "invalid choice: 'xml'"),
        (["data", "info", "--labels", "fer+"], "invalid choice: 'fer+'"),
        (["data", "show", "--per-class", "x"], "invalid int value: 'x'"),
        (["data"], "required"),
        (["nope"], "invalid choice: 'nope'"),
        ([], "required"),
    ],
)
def test_bad_option_one_line_exit_2(run_ferkit, args, part):
    proc = run_ferkit(*args)
    assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith("ferkit") and "error:" in line and part in line


def test_bad_option_in_process(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["data", "info", "--format", "yaml"])
    assert exit_.value.code == 2
    assert len(capsys.readouterr().err.splitlines()) == 1


def test_per_class_must_be_positive(tmp_path, run_ferkit, make_fer_csv):
    rows = make_fer_csv(tmp_path / "f.csv")
    assert_data_error(run_ferkit("data", "show", rows.path, "--per-class", "0"), "--per-class 0")


# ---------------------------------------------------------------- path resolution


def test_no_data_anywhere(tmp_path, run_ferkit):
    proc = run_ferkit("data", "info", cwd=tmp_path, env={"FERKIT_DATA": None})
    assert_data_error(proc, "ferkit: error: no FER2013 data found", "--data PATH", "FERKIT_DATA")


@pytest.mark.parametrize("name", ["fer2013.csv", "fer2013.csv.gz"])
def test_data_folder_in_cwd(tmp_path, run_ferkit, make_fer_csv, name):
    make_fer_csv(tmp_path / "data" / name)
    proc = run_ferkit("data", "info", cwd=tmp_path, env={"FERKIT_DATA": None})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"data/{name}: 28 images")


def test_env_then_argument(tmp_path, run_ferkit, make_fer_csv):
    make_fer_csv(tmp_path / "data" / "fer2013.csv", n_per_split=(7, 7, 7))
    make_fer_csv(tmp_path / "env.csv", n_per_split=(14, 0, 0))
    make_fer_csv(tmp_path / "arg.csv", n_per_split=(0, 0, 35))
    env = {"FERKIT_DATA": "env.csv"}  # relative to the cwd
    proc = run_ferkit("data", "info", "--format", "json", cwd=tmp_path, env=env)
    assert json.loads(proc.stdout)["total"] == 14
    proc = run_ferkit("data", "info", "arg.csv", "--format", "json", cwd=tmp_path, env=env)
    assert json.loads(proc.stdout)["total"] == 35
    proc = run_ferkit("data", "info", cwd=tmp_path, env={"FERKIT_DATA": "gone.csv"})
    assert_data_error(proc, "gone.csv (from FERKIT_DATA): no such file or folder")


# ---------------------------------------------------------------- data info


def test_info_text_and_json_small(tmp_path, make_fer_csv, capsys):
    rows = make_fer_csv(tmp_path / "f.csv", n_per_split=(14, 7, 0))
    assert main(["data", "info", str(rows.path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{rows.path}: 21 images, 48x48 grayscale"
    assert out[1].split() == ["split", *CLASS_NAMES, "total"]
    assert out[2].split() == ["Training", *["2"] * 7, "14"]
    assert out[3].split() == ["PublicTest", *["1"] * 7, "7"]
    assert out[-1].startswith("duplicates: 0 rows repeat")
    assert main(["data", "info", str(rows.path), "--format", "json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["total"] == 21 and list(info["splits"]) == ["Training", "PublicTest"]
    assert info["splits"]["Training"]["classes"] == dict.fromkeys(CLASS_NAMES, 2)


def test_info_unlabelled_test_csv(tmp_path, make_fer_csv, capsys):
    rows = make_fer_csv(tmp_path / "test.csv", n_per_split=(3,), columns=("pixels",))
    assert main(["data", "info", str(rows.path)]) == 0
    out = capsys.readouterr().out
    assert "(3 unlabelled)" in out and "labels: 0 labelled, 3 unlabelled" in out


def test_real_info_json(real_data_path, run_ferkit, real_dataset):
    proc = run_ferkit("data", "info", "--format", "json", env={"FERKIT_DATA": str(real_data_path)})
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["total"] == 35887
    assert list(info["splits"]) == list(REAL_COUNTS)
    for split, counts in REAL_COUNTS.items():
        assert info["splits"][split]["total"] == sum(counts)
        assert info["splits"][split]["classes"] == dict(zip(CLASS_NAMES, counts, strict=True))
    assert info["classes"] == {
        c: sum(REAL_COUNTS[s][k] for s in REAL_COUNTS) for k, c in enumerate(CLASS_NAMES)
    }


def test_real_info_text(real_data_path, run_ferkit, real_dataset):
    proc = run_ferkit("data", "info", real_data_path)
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line.split()[1:] for line in proc.stdout.splitlines()[2:5]}
    for split, counts in REAL_COUNTS.items():
        assert rows[split] == [str(n) for n in counts] + [str(sum(counts))]


def test_real_info_ferplus(real_data_path, real_ferplus_path, run_ferkit, real_dataset):
    proc = run_ferkit(
        "data",
        "info",
        real_data_path,
        "--labels",
        "ferplus",
        "--ferplus",
        real_ferplus_path,
        "--format",
        "json",
    )
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["total"] == 35887
    assert 30000 < info["labels"]["labelled"] < 35887
    assert any("FER+ labels from" in note for note in info["notes"])


def test_real_ferplus_wrong_data(tiny_real_csv, real_ferplus_path, run_ferkit):
    proc = run_ferkit("data", "info", tiny_real_csv, "--labels", "ferplus", "--ferplus", real_ferplus_path)
    assert_data_error(proc, "ferkit: error: ", "not the FER+ file of this data")


# ---------------------------------------------------------------- data show


def test_show_writes_a_real_png(tmp_path, run_ferkit, make_fer_csv):
    rows = make_fer_csv(tmp_path / "f.csv")
    out = tmp_path / "out" / "grid.png"
    proc = run_ferkit("data", "show", rows.path, "--out", out, "--per-class", "3")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out)
    with Image.open(out) as im:
        assert im.format == "PNG"
        assert im.width > 100 and im.height > 100
        pixels = np.asarray(im.convert("L"))
    assert pixels.std() > 10  # faces and text, not a blank page


def test_show_split_and_default_out(tmp_path, make_fer_csv, capsys, monkeypatch):
    rows = make_fer_csv(tmp_path / "f.csv")
    monkeypatch.chdir(tmp_path)
    assert main(["data", "show", str(rows.path), "--split", "PublicTest", "--seed", "3"]) == 0
    assert capsys.readouterr().out.strip() == "grid.png"
    with Image.open(tmp_path / "grid.png") as im:
        assert im.size[0] > 0
    assert main(["data", "show", str(rows.path), "--split", "test"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ferkit: error: ") and "no rows in split 'test'" in err


def test_show_unwritable_out(tmp_path, run_ferkit, make_fer_csv):
    rows = make_fer_csv(tmp_path / "f.csv")
    (tmp_path / "file").write_text("x")
    proc = run_ferkit("data", "show", rows.path, "--out", tmp_path / "file" / "grid.png")
    assert_data_error(proc, "cannot write the figure")


def test_real_show(tiny_real_csv, tmp_path, run_ferkit):
    out = tmp_path / "real.png"
    proc = run_ferkit("data", "show", tiny_real_csv, "--out", out, "--split", "Training")
    assert proc.returncode == 0, proc.stderr
    with Image.open(out) as im:
        assert np.asarray(im.convert("L")).std() > 10


# ---------------------------------------------------------------- data download (no network: fake kagglehub)


def test_download_without_kagglehub(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "kagglehub", None)  # import fails as when not installed
    assert main(["data", "download", "--out", str(tmp_path / "d")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ferkit: error: kagglehub is not installed" in err


def test_download_failure_is_one_line(tmp_path, monkeypatch, capsys):
    def fail(_handle):
        raise ConnectionError("no network\nsecond line of details")

    fake = types.SimpleNamespace(competition_download=fail, dataset_download=fail)
    monkeypatch.setitem(sys.modules, "kagglehub", fake)
    assert main(["data", "download", "--out", str(tmp_path / "d"), "--source", "folders"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "download from Kaggle failed (ConnectionError: no network)" in err


def test_download_copies_files(tmp_path, monkeypatch, capsys, make_fer_csv):
    rows = make_fer_csv(tmp_path / "kaggle-cache" / "icml_face_data.csv")
    fake = types.SimpleNamespace(competition_download=lambda _handle: str(rows.path.parent))
    monkeypatch.setitem(sys.modules, "kagglehub", fake)
    out = tmp_path / "data"
    assert main(["data", "download", "--out", str(out)]) == 0
    assert f"--data {out}" in capsys.readouterr().out
    assert (out / "icml_face_data.csv").read_bytes() == rows.path.read_bytes()
    assert main(["data", "info", str(out), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["total"] == 28
