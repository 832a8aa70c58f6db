"""FER2013 given as the archive it is downloaded as (.tar.gz, .tar, .tar.bz2, .tar.xz, .zip): loads like
the file or folder inside, unpacks once into the cache, and refuses broken or hostile archives clearly."""

from __future__ import annotations

import io
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ferkit.data.archive as archive_mod
from ferkit.data import FerDataset, load_dataset
from ferkit.errors import FerkitError

README = b"fer2013: 35887 faces, see the .bib for the citation\n"
BIB = b"@misc{fer2013, title={Challenges in Representation Learning}}\n"


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty ferkit cache for each test."""
    path = tmp_path / "cache"
    monkeypatch.setenv("FERKIT_CACHE_DIR", str(path))
    return path


def cli_main() -> Callable[[list[str]], int]:
    """`ferkit`'s in-process entry point, wherever the CLI module lives (ferkit.cli or ferkit.cli.main)."""
    try:
        from ferkit.cli.main import main
    except ImportError:
        from ferkit.cli import main
    return main


def make_tar(path: Path, members: dict[str, bytes | Path], mode: str = "w:gz") -> Path:
    """A tar archive of `members` (archive name -> bytes, or a file to add under that name)."""
    with tarfile.open(path, mode) as tf:
        for name, content in members.items():
            data = content.read_bytes() if isinstance(content, Path) else content
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def make_zip(path: Path, members: dict[str, bytes | Path]) -> Path:
    """A deflated zip archive of `members` (archive name -> bytes, or a file to add under that name)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in members.items():
            zf.writestr(name, content.read_bytes() if isinstance(content, Path) else content)
    return path


def kaggle_tar(tmp_path: Path, csv: Path, name: str = "fer2013.tar.gz", mode: str = "w:gz") -> Path:
    """The layout of Kaggle's fer2013.tar.gz: fer2013/fer2013.csv beside a README and a .bib."""
    members = {"fer2013/fer2013.csv": csv, "fer2013/README": README, "fer2013/fer2013.bib": BIB}
    return make_tar(tmp_path / name, members, mode)


def assert_same(ds: FerDataset, ref: FerDataset) -> None:
    """Same images, labels, splits and row numbers."""
    np.testing.assert_array_equal(ds.images, ref.images)
    np.testing.assert_array_equal(ds.labels, ref.labels)
    assert ds.splits.tolist() == ref.splits.tolist()
    np.testing.assert_array_equal(ds.indices, ref.indices)


def image_folders(root: Path) -> Path:
    """A tiny Kaggle image-folder FER2013: train/<class>/*.png and test/<class>/*.png."""
    rng = np.random.default_rng(0)
    for split, classes in (("train", ("angry", "happy", "neutral")), ("test", ("happy", "sad"))):
        for cls in classes:
            for k in range(2):
                (root / split / cls).mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 256, (48, 48), dtype=np.uint8)).save(
                    root / split / cls / f"{k}.png"
                )
    return root


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def one_line_error(excinfo: pytest.ExceptionInfo[FerkitError], archive: Path, *needles: str) -> str:
    """The FerkitError is one line naming the archive (not the cache) and holding every needle."""
    msg = str(excinfo.value)
    assert "\n" not in msg and msg.startswith(str(archive)), msg
    for needle in needles:
        assert needle in msg, msg
    return msg


# ---------------------------------------------------------------- the forms FER2013 is downloaded as


@pytest.mark.parametrize(
    ("name", "mode"),
    [
        ("fer2013.tar.gz", "w:gz"),
        ("fer2013.tgz", "w:gz"),
        ("fer2013.tar", "w"),
        ("fer2013.tar.bz2", "w:bz2"),
        ("fer2013.tar.xz", "w:xz"),
        ("download", "w:gz"),  # no suffix: recognised by its content
    ],
)
def test_kaggle_tar_loads_like_the_csv(tmp_path, make_fer_csv, name, mode):
    rows = make_fer_csv(tmp_path / "src" / "fer2013.csv")
    archive = kaggle_tar(tmp_path, rows.path, name, mode)
    ds = load_dataset(archive)
    assert_same(ds, load_dataset(rows.path))
    np.testing.assert_array_equal(ds.images, rows.images)
    assert ds.split_names() == ["Training", "PublicTest", "PrivateTest"]
    assert ds.source == str(archive) and ds.notes == []


@pytest.mark.parametrize("inner", ["fer2013.csv", "my_faces.csv", "fer2013.csv.gz"])
def test_zip_of_the_csv(tmp_path, make_fer_csv, inner):
    rows = make_fer_csv(tmp_path / "src" / inner)
    archive = make_zip(tmp_path / "fer2013.zip", {inner: rows.path})
    ds = load_dataset(archive)
    assert_same(ds, load_dataset(rows.path))
    assert ds.source == str(archive)


def test_zip_with_windows_backslash_names(tmp_path, make_fer_csv):
    rows = make_fer_csv(tmp_path / "src" / "fer2013.csv")
    with zipfile.ZipFile(tmp_path / "fer2013.zip", "w") as zf:
        zf.writestr(zipfile.ZipInfo("fer2013\\"), b"")  # ZipInfo keeps the name as given
        zf.writestr(zipfile.ZipInfo("fer2013\\fer2013.csv"), rows.path.read_bytes())
    assert_same(load_dataset(tmp_path / "fer2013.zip"), load_dataset(rows.path))


def test_zip_of_the_kaggle_competition_files(tmp_path, make_fer_csv):
    """The competition download: several CSVs and fer2013.tar.gz; icml_face_data.csv holds every split."""
    rows = make_fer_csv(tmp_path / "src" / "icml_face_data.csv", columns=("emotion", " Usage", " pixels"))
    train = make_fer_csv(tmp_path / "src" / "train.csv", n_per_split=(7,), columns=("emotion", "pixels"))
    members = {
        "icml_face_data.csv": rows.path,
        "train.csv": train.path,
        "example_submission.csv": b"emotion\n0\n",
        "fer2013.tar.gz": b"not read",
    }
    ds = load_dataset(make_zip(tmp_path / "challenges-in-representation-learning.zip", members))
    assert_same(ds, load_dataset(rows.path))


@pytest.mark.parametrize("top", ["", "fer2013-images/"])
def test_zip_of_image_folders(tmp_path, top):
    folders = image_folders(tmp_path / "faces")
    members: dict[str, bytes | Path] = {
        top + p.relative_to(folders).as_posix(): p for p in files_under(folders)
    }
    members[f"__MACOSX/{top}train/happy/._0.png"] = b"\x00\x05\x16\x07 AppleDouble, not a png"
    members[f"{top}train/.DS_Store"] = b"\x00\x00\x00\x01Bud1"
    archive = make_zip(tmp_path / "fer2013-images.zip", members)
    ds = load_dataset(archive)
    assert_same(ds, load_dataset(folders))
    assert sorted(set(ds.splits.tolist())) == ["Training", "test"]
    assert ds.source == str(archive) and ds.notes == []


def test_tar_gz_of_image_folders_in_a_top_folder(tmp_path):
    folders = image_folders(tmp_path / "faces")
    archive = make_tar(
        tmp_path / "faces.tar.gz", {f"fer/{p.relative_to(folders)}": p for p in files_under(folders)}
    )
    assert_same(load_dataset(archive), load_dataset(folders))


def test_cli_data_info_prints_the_same_counts(tmp_path, make_fer_csv, capsys):
    main = cli_main()
    rows = make_fer_csv(tmp_path / "src" / "fer2013.csv")
    archive = kaggle_tar(tmp_path, rows.path)
    assert main(["data", "info", str(rows.path)]) == 0
    from_csv = capsys.readouterr().out
    assert main(["data", "info", str(archive)]) == 0
    from_archive = capsys.readouterr().out
    assert from_archive.splitlines()[0] == f"{archive}: 28 images, 48x48 grayscale"
    assert from_archive.replace(str(archive), str(rows.path)) == from_csv


# ---------------------------------------------------------------- the cache


def test_second_load_reuses_the_unpacked_folder(tmp_path, make_fer_csv, cache):
    rows = make_fer_csv(tmp_path / "src" / "fer2013.csv")
    archive = kaggle_tar(tmp_path, rows.path)
    first = load_dataset(archive, cache=False)  # cache=False: skip the parsed-data cache, read the files
    (unpacked_csv,) = cache.rglob("fer2013.csv")
    folder = unpacked_csv.parent
    (folder / "sentinel").write_text("a re-created folder would lose this")
    before = folder.stat()
    second = load_dataset(archive, cache=False)
    assert_same(second, first)
    after = folder.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert (folder / "sentinel").exists()
    assert [p.name for p in cache.rglob("fer2013.csv")] == ["fer2013.csv"]
    assert not list(cache.rglob("*.partial"))

    # Same bytes under another name: the same unpacked folder, but the dataset names the new file.
    copy = tmp_path / "elsewhere.tar.gz"
    copy.write_bytes(archive.read_bytes())
    assert load_dataset(copy, cache=False).source == str(copy)
    assert len(list(cache.rglob("fer2013.csv"))) == 1


def test_changed_archive_is_unpacked_again(tmp_path, make_fer_csv):
    archive = kaggle_tar(tmp_path, make_fer_csv(tmp_path / "a" / "fer2013.csv", seed=0).path)
    load_dataset(archive)
    rows = make_fer_csv(tmp_path / "b" / "fer2013.csv", seed=1)
    kaggle_tar(tmp_path, rows.path)  # same name, new content
    np.testing.assert_array_equal(load_dataset(archive).images, rows.images)


def test_interrupted_unpack_leaves_nothing_trusted(tmp_path, make_fer_csv, cache, monkeypatch):
    rows = make_fer_csv(tmp_path / "src" / "fer2013.csv")
    archive = kaggle_tar(tmp_path, rows.path)
    real_write = archive_mod._Budget.write

    def killed(self, src, dest, parts):
        real_write(self, src, dest, parts)
        raise KeyboardInterrupt  # Ctrl-C after the first member is written

    monkeypatch.setattr(archive_mod._Budget, "write", killed)
    with pytest.raises(KeyboardInterrupt):
        load_dataset(archive)
    assert files_under(cache) == []
    monkeypatch.undo()
    monkeypatch.setenv("FERKIT_CACHE_DIR", str(cache))
    np.testing.assert_array_equal(load_dataset(archive).images, rows.images)


def test_unwritable_cache_still_loads_and_cleans_up(tmp_path, make_fer_csv, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("FERKIT_CACHE_DIR", str(blocker / "cache"))
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    rows = make_fer_csv(tmp_path / "src" / "fer2013.csv")
    ds = load_dataset(kaggle_tar(tmp_path, rows.path))
    np.testing.assert_array_equal(ds.images, rows.images)
    assert list(scratch.iterdir()) == []


# ---------------------------------------------------------------- errors name the archive


def test_bad_row_inside_names_the_archive_member(tmp_path):
    good = " ".join(["7"] * 2304)
    csv = f"emotion,pixels,Usage\n0,{good},Training\n1,x,Training\n".encode()
    archive = make_tar(tmp_path / "fer2013.tar.gz", {"fer2013/fer2013.csv": csv})
    with pytest.raises(FerkitError) as excinfo:
        load_dataset(archive)
    one_line_error(excinfo, archive, f"{archive}/fer2013/fer2013.csv: line 3: pixel 1 is 'x'")
    ds = load_dataset(archive, skip_bad_rows=True)
    assert ds.notes == [f"skipped 1 bad rows (first: {archive}/fer2013/fer2013.csv: line 3: pixel 1 is 'x', "
                        "not an integer 0-255)"]  # fmt: skip
    assert "cache" not in " ".join(ds.notes)


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_truncated_archive_is_a_one_line_error(tmp_path, make_fer_csv, cache, kind):
    rows = make_fer_csv(tmp_path / "src" / "fer2013.csv")
    if kind == "zip":
        whole = make_zip(tmp_path / "whole.zip", {"fer2013.csv": rows.path})
    else:
        whole = kaggle_tar(tmp_path, rows.path, "whole.tar.gz")
    archive = tmp_path / f"fer2013.{kind}"
    archive.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(FerkitError) as excinfo:
        load_dataset(archive)
    one_line_error(excinfo, archive, "truncated or corrupt archive")
    assert files_under(cache) == []


def test_cli_truncated_archive_one_line_on_stderr(tmp_path, make_fer_csv, capsys):
    rows = make_fer_csv(tmp_path / "src" / "fer2013.csv")
    whole = kaggle_tar(tmp_path, rows.path, "whole.tar.gz")
    archive = tmp_path / "fer2013.tar.gz"
    archive.write_bytes(whole.read_bytes()[:3000])
    assert cli_main()(["data", "info", str(archive)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"ferkit: error: {archive}: truncated or corrupt archive")


@pytest.mark.parametrize(
    ("members", "expected"),
    [
        ({"README.txt": b"hello", "docs/notes.md": b"# notes"}, "no FER2013 data inside"),
        ({}, "empty archive"),
        ({"fer2013/": b""}, "empty archive"),
        ({"a.csv": b"emotion,pixels\n", "b.csv": b"x\n"}, "2 CSV files inside (a.csv, b.csv)"),
        ({"data/faces.csv": b"id,name\n1,x\n"}, "/data/faces.csv: no 'pixels' column"),
    ],
)
@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_archive_without_fer2013_data(tmp_path, members, expected, kind):
    path = tmp_path / f"stuff.{kind}"
    if kind == "zip":
        archive = make_zip(path, members)
    else:
        with tarfile.open(path, "w:gz") as tf:
            for name, data in members.items():
                info = tarfile.TarInfo(name.rstrip("/"))
                if name.endswith("/"):
                    info.type = tarfile.DIRTYPE
                else:
                    info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
        archive = path
    with pytest.raises(FerkitError) as excinfo:
        load_dataset(archive)
    one_line_error(excinfo, archive, expected)


# ---------------------------------------------------------------- hostile archives


def hostile_tar(path: Path, csv: Path, evil: tarfile.TarInfo, data: bytes = b"") -> Path:
    """A real FER2013 member first (so something was already unpacked), then the hostile one."""
    with tarfile.open(path, "w:gz") as tf:
        tf.add(csv, arcname="fer2013/fer2013.csv")
        tf.addfile(evil, io.BytesIO(data) if data else None)
    return path


@pytest.mark.parametrize(
    ("kind", "needle"),
    [
        ("dotdot", "'..' in its path"),
        ("nested_dotdot", "'..' in its path"),
        ("absolute", "absolute path"),
        ("symlink", "symlink"),
        ("hardlink", "hard link"),
        ("device", "device or special file"),
    ],
)
def test_hostile_tar_is_refused_and_writes_nothing(tmp_path, make_fer_csv, cache, kind, needle):
    rows = make_fer_csv(tmp_path / "src" / "fer2013.csv")
    outside = tmp_path / "evil"
    name = {
        "dotdot": "../evil",
        "nested_dotdot": "fer2013/../../../evil",
        "absolute": str(outside),
    }.get(kind, "fer2013/evil")
    info = tarfile.TarInfo(name)
    data = b""
    if kind == "symlink":
        info.type, info.linkname = tarfile.SYMTYPE, str(outside)
    elif kind == "hardlink":
        info.type, info.linkname = tarfile.LNKTYPE, "../../evil"
    elif kind == "device":
        info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
    else:
        data = b"pwned"
        info.size = len(data)
    archive = hostile_tar(tmp_path / "fer2013.tar.gz", rows.path, info, data)
    with pytest.raises(FerkitError) as excinfo:
        load_dataset(archive)
    one_line_error(excinfo, archive, "refusing member", needle)
    assert not [p for p in tmp_path.rglob("evil*")]
    assert files_under(cache) == []  # the half-unpacked folder is gone too


@pytest.mark.parametrize("name", ["../evil", "/tmp/evil", "a\\..\\..\\evil", "C:/evil"])
def test_hostile_zip_names_are_refused(tmp_path, make_fer_csv, cache, name):
    rows = make_fer_csv(tmp_path / "src" / "fer2013.csv")
    with zipfile.ZipFile(tmp_path / "fer2013.zip", "w") as zf:
        zf.write(rows.path, "fer2013.csv")
        zf.writestr(zipfile.ZipInfo(name), b"pwned")  # ZipInfo keeps the name as given
    with pytest.raises(FerkitError) as excinfo:
        load_dataset(tmp_path / "fer2013.zip")
    one_line_error(excinfo, tmp_path / "fer2013.zip", "refusing member")
    assert not list(tmp_path.rglob("evil"))
    assert files_under(cache) == []


def test_zip_symlink_is_refused(tmp_path, make_fer_csv):
    rows = make_fer_csv(tmp_path / "src" / "fer2013.csv")
    link = zipfile.ZipInfo("fer2013/link")
    link.external_attr = (0o120777 << 16) | 0x20  # S_IFLNK, as `zip --symlinks` writes it
    with zipfile.ZipFile(tmp_path / "fer2013.zip", "w") as zf:
        zf.write(rows.path, "fer2013/fer2013.csv")
        zf.writestr(link, "/etc/passwd")
    with pytest.raises(FerkitError) as excinfo:
        load_dataset(tmp_path / "fer2013.zip")
    one_line_error(excinfo, tmp_path / "fer2013.zip", "refusing member 'fer2013/link': symlink")


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_size_and_member_caps(tmp_path, make_fer_csv, cache, monkeypatch, kind):
    """A bomb is refused; the caps are lowered here so that a small archive passes them."""
    rows = make_fer_csv(tmp_path / "src" / "fer2013.csv")
    members = {"fer2013/fer2013.csv": rows.path, "fer2013/zeros.bin": bytes(1 << 20)}
    make = make_zip if kind == "zip" else make_tar
    archive = make(tmp_path / f"bomb.{kind}", members)
    assert archive.stat().st_size < rows.path.stat().st_size  # 1 MiB of zeros packs to almost nothing
    monkeypatch.setattr(archive_mod, "MAX_BYTES", 1 << 20)
    with pytest.raises(FerkitError) as excinfo:
        load_dataset(archive)
    one_line_error(excinfo, archive, "unpacks to more than 1 MiB")
    monkeypatch.setattr(archive_mod, "MAX_BYTES", 4 << 30)
    monkeypatch.setattr(archive_mod, "MAX_MEMBERS", 1)
    with pytest.raises(FerkitError) as excinfo:
        load_dataset(archive)
    one_line_error(excinfo, archive, "more than 1 members")
    assert files_under(cache) == []
