"""`ferkit export`: ONNX graphs of a real tiny checkpoint and of an ensemble, checked against PyTorch."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")

from ferkit.classes import CLASS_NAMES, NUM_CLASSES  # noqa: E402
from ferkit.errors import FerkitError  # noqa: E402
from ferkit.runtime.loading import load_predictor, resolve_model_path, save_ensemble_spec  # noqa: E402
from ferkit.runtime.onnx import INPUT_NAME, OUTPUT_NAME, OnnxPredictor, load_onnx_predictor  # noqa: E402
from ferkit.shipping.export import export_data, export_onnx, parity_faces  # noqa: E402

TOL = 1e-4


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """PyTorch on one thread here: on a CPU shared with other work its thread pool can run the
    reference predictions 20x slower (mobilenet_v2 at 96 x 96: 2.4 s instead of 0.1 s for 37 faces)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def public_faces(real_dataset) -> np.ndarray:
    """The first 101 real PublicTest faces: 64 for the export's parity check, 37 more unseen by it."""
    return real_dataset.split("PublicTest").images[:101]


@pytest.fixture(scope="module")
def tiny_onnx(tiny_checkpoint: Path, public_faces, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("export") / "nested" / "tiny.onnx"
    return out, export_onnx(str(tiny_checkpoint), out, check_images=public_faces[:64])


def recalibrated(model, faces: np.ndarray, head_scale: float, path: Path) -> Path:
    """Save `model` (a registry model) with BatchNorm statistics recomputed on `faces` and its last
    Linear layer's weights scaled by `head_scale`.

    Two short epochs leave the tiny checkpoint's probabilities nearly the same for every face (std
    ~1e-4), and a fresh mobilenet_v2 says 1/7 everywhere: a 1e-4 parity check on those says little.
    Recomputed statistics make both vary from face to face while staying well conditioned (a
    re-centred, blown-up head would not be: its float32 rounding alone nears 1e-4).
    """
    import torch

    from ferkit.data.transforms import BatchTransform
    from ferkit.runtime.checkpoint import model_payload

    cfg = model.default_cfg
    tf = BatchTransform(tuple(cfg["input_size"]), tuple(cfg["mean"]), tuple(cfg["std"]))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # a plain average over the calibration batch
    model.train()
    with torch.no_grad():
        model(tf(torch.from_numpy(faces)))
        [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1].weight.mul_(head_scale)
    torch.save(model_payload(model.eval(), CLASS_NAMES), path)
    return path


@pytest.fixture(scope="module")
def ensemble_onnx(tiny_checkpoint: Path, real_dataset, public_faces, tmp_path_factory):
    """(spec, onnx, result): the tiny cnn (1 x 48 x 48) and a mobilenet_v2 (3 x 96 x 96), both
    recalibrated on 64 Training faces, weights 2:1, default TTA flip."""
    import torch

    from ferkit.models import create_model

    d = tmp_path_factory.mktemp("ensemble")
    train = real_dataset.split("Training").images[:64]
    cnn = recalibrated(load_predictor(tiny_checkpoint, "cpu")[0].model, train, 3.0, d / "cnn.pth")
    torch.manual_seed(0)
    mobilenet = create_model("mobilenet_v2", in_chans=3)
    assert tuple(mobilenet.default_cfg["input_size"]) == (3, 96, 96)
    mobilenet = recalibrated(mobilenet, train, 5.0, d / "mobilenet.pth")
    spec = d / "ensemble.json"
    save_ensemble_spec(spec, [str(cnn), str(mobilenet)], np.array([2.0, 1.0]), "flip", "test")
    out = d / "ensemble.onnx"
    return spec, out, export_onnx(str(spec), out, check_images=public_faces[:32])


def graph_io(path: Path) -> tuple[list, list]:
    """(name, elem_type, dims) of the graph's inputs and outputs; a dim is an int or its symbol's name."""
    model = onnx.load(str(path))
    onnx.checker.check_model(model)

    def describe(values):
        return [
            (
                v.name,
                v.type.tensor_type.elem_type,
                [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim],
            )
            for v in values
        ]

    return describe(model.graph.input), describe(model.graph.output)


# ----------------------------------------------------------------------------- one checkpoint
def test_export_checkpoint_result_and_file(tiny_onnx):
    out, result = tiny_onnx
    assert result["output"] == str(out) and out.is_file()
    assert result["images"] == 64 and result["random_faces"] is False
    assert result["opset"] >= 18
    assert 0 <= result["max_abs_diff"] < TOL
    assert [p.name for p in out.parent.iterdir()] == ["tiny.onnx"]  # no temporary file left behind


def test_graph_inputs_outputs_and_metadata(tiny_onnx):
    out, _ = tiny_onnx
    inputs, outputs = graph_io(out)
    f32 = onnx.TensorProto.FLOAT
    assert len(inputs) == 1 and len(outputs) == 1
    (in_name, in_type, in_dims), (out_name, out_type, out_dims) = inputs[0], outputs[0]
    assert (in_name, in_type, in_dims[1:]) == (INPUT_NAME, f32, [1, 48, 48])
    assert (out_name, out_type, out_dims[1:]) == (OUTPUT_NAME, f32, [NUM_CLASSES])
    assert isinstance(in_dims[0], str) and in_dims[0] == out_dims[0]  # one symbolic batch dimension
    meta = OnnxPredictor(out).metadata
    assert meta["format"] == "ferkit-onnx" and meta["arch"] == "cnn" and meta["tta"] == "none"


def test_parity_batch_sizes_and_probabilities(tiny_checkpoint, tiny_onnx, public_faces):
    """Faces the export's check never saw, in batches of 1 and 37, against ferkit's PyTorch predict."""
    out, _ = tiny_onnx
    faces = public_faces[64:101]
    torch_model, _ = load_predictor(tiny_checkpoint, "cpu")
    expected = torch_model.predict(faces)
    onnx_model = OnnxPredictor(out)
    for batch_size in (1, 37):
        got = onnx_model.predict(faces, batch_size=batch_size)
        assert got.shape == (37, NUM_CLASSES)
        assert np.abs(got - expected).max() < TOL
        np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)
    raw = onnx_model.session.run(None, {INPUT_NAME: faces[:1, None].astype(np.float32) / 255})[0]
    assert raw.shape == (1, NUM_CLASSES) and raw.dtype == np.float32


def test_tta_flip_is_the_mean_of_both_views(tiny_checkpoint, tiny_onnx, public_faces):
    out, _ = tiny_onnx
    faces = public_faces[:8]
    model = OnnxPredictor(out)
    both = model.predict(faces, tta="flip")
    mirrored = np.ascontiguousarray(faces[:, :, ::-1])
    np.testing.assert_allclose(both, (model.predict(faces) + model.predict(mirrored)) / 2, atol=1e-6)
    torch_model, _ = load_predictor(tiny_checkpoint, "cpu")
    assert np.abs(both - torch_model.predict(faces, tta="flip")).max() < TOL
    few = faces[:4]  # ten views each: PyTorch is the slow side here
    assert np.abs(model.predict(few, tta="tencrop") - torch_model.predict(few, tta="tencrop")).max() < TOL
    with pytest.raises(FerkitError, match="--tta"):
        model.predict(faces, tta="rotate")


# ----------------------------------------------------------------------------- ensemble
def test_ensemble_export_one_graph_with_weights(ensemble_onnx, public_faces):
    spec, out, result = ensemble_onnx
    assert result["max_abs_diff"] < TOL and result["images"] == 32
    inputs, outputs = graph_io(out)
    assert inputs[0][0] == INPUT_NAME and inputs[0][2][1:] == [1, 48, 48] and isinstance(inputs[0][2][0], str)
    assert outputs[0][2][1:] == [NUM_CLASSES]
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"Resize", "Expand", "Softmax"} <= ops  # 48 -> 96 resize and 1 -> 3 channels inside the graph

    faces = public_faces[64:101]
    ensemble, tta = load_predictor(spec, "cpu")
    model, onnx_tta = load_onnx_predictor(out)
    assert onnx_tta == "flip"
    assert model.default_tta == tta == "flip" and model.arch == "cnn+mobilenet_v2"
    members = ensemble.predict_members(faces)
    for probs in members:  # both members' probabilities vary from face to face: parity says something
        assert probs.std(0).max() > 0.05
    assert np.abs(members[0] - members[1]).max() > 0.1  # the weights matter
    expected = (2 * members[0] + members[1]) / 3
    for batch_size in (1, 37):
        got = model.predict(faces, batch_size=batch_size)
        assert np.abs(got - expected).max() < TOL
        np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)
    few = faces[:8]
    assert np.abs(model.predict(few, tta="flip") - ensemble.predict(few, tta="flip")).max() < TOL


# ----------------------------------------------------------------------------- int8
@pytest.fixture(scope="module")
def fast_int8(real_dataset, public_faces, tmp_path_factory) -> tuple[Path, dict]:
    """The shipped fast model (really trained: its classes vary) in int8, calibrated on 256 Training faces."""
    out = tmp_path_factory.mktemp("int8") / "fast-int8.onnx"
    calibration = real_dataset.split("Training").images[:256]
    model = resolve_model_path("ferkit-fer2013-fast")
    return out, export_onnx(model, out, check_images=public_faces[:64], calibration=calibration)


def test_int8_export_is_smaller_and_agrees_with_pytorch(fast_int8, real_dataset):
    import json

    out, result = fast_int8
    assert result["quantized"] == "int8" and result["max_abs_diff"] < TOL  # the float graph, checked first
    assert result["int8_agreement"] >= 0.9 and 0 < result["int8_max_abs_diff"] < 0.1
    model = OnnxPredictor(out)
    assert model.metadata["quantized"] == "int8" and model.metadata["format"] == "ferkit-onnx"
    graph = onnx.load(str(out)).graph
    assert "QuantizeLinear" in {n.op_type for n in graph.node}
    # 7-bit weights (full range: up to 127), so the file runs right on CPUs without VNNI (see quantize_int8)
    int8 = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
    weights = [onnx.numpy_helper.to_array(t) for t in int8]
    assert weights and max(int(abs(w).max()) for w in weights) <= 64
    card = json.loads((Path(__file__).parents[1] / "src/ferkit/weights/ferkit-fer2013-fast.json").read_text())
    assert out.stat().st_size < 4 * card["parameters"] * 0.35  # int8 weights: about a quarter of float32
    faces = real_dataset.split("PublicTest").images[100:600]  # unseen by the export's checks
    expected = load_predictor(resolve_model_path("ferkit-fer2013-fast"), "cpu")[0].predict(faces)
    got = model.predict(faces)
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-4)
    assert (got.argmax(1) == expected.argmax(1)).mean() > 0.95 and np.abs(got - expected).max() < 0.15


def test_int8_that_disagrees_is_refused(tiny_checkpoint, public_faces, tmp_path, monkeypatch):
    import ferkit.shipping.export as export

    monkeypatch.setattr(export, "INT8_MIN_AGREEMENT", 1.01)  # no graph can pass: the refusal path
    target = tmp_path / "m.onnx"
    with pytest.raises(FerkitError, match=r"int8 graph picks PyTorch's class on only .*m.onnx not written"):
        export_onnx(
            str(tiny_checkpoint), target, check_images=public_faces[:16], calibration=public_faces[:32]
        )
    assert list(tmp_path.iterdir()) == []


def test_cli_export_int8_and_evaluate_it(
    run_ferkit, fast_int8, tiny_checkpoint, tiny_onnx, tiny_real_csv, tmp_path
):
    import json

    out = tmp_path / "int8.onnx"
    proc = run_ferkit(
        "export", "--model_path", tiny_checkpoint, "-o", out, "--quantize", "int8", "--data", tiny_real_csv
    )
    assert proc.returncode == 0, proc.stderr
    assert "int8 (calibrated on 700 Training faces)" in proc.stdout.splitlines()[2]
    assert OnnxPredictor(out).metadata["quantized"] == "int8"
    # evaluate runs an .onnx on ONNX Runtime and says it is int8
    shipped_int8 = fast_int8[0]
    args = ["evaluate", "--model_path", shipped_int8, "--backend", "onnx", "--data", tiny_real_csv]
    proc = run_ferkit(*args, "--split", "PublicTest", "--format", "json", "--wandb", "disabled")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert (report["backend"], report["precision"], report["num_images"]) == ("onnx", "int8", 140)
    from ferkit.data import load_dataset

    public = load_dataset(tiny_real_csv).split("PublicTest")
    accuracy = (OnnxPredictor(shipped_int8).predict(public.images).argmax(1) == public.labels).mean()
    assert report["accuracy"] == pytest.approx(accuracy) and report["accuracy"] > 0.5
    args[2] = tiny_onnx[0]  # a float export
    proc = run_ferkit(*args, "--split", "PublicTest", "--format", "json", "--wandb", "disabled")
    assert proc.returncode == 0 and json.loads(proc.stdout)["precision"] == "fp32", proc.stderr
    for extra, needle in (
        (["--model_path", tiny_checkpoint, "--backend", "onnx"], "takes an .onnx file written by"),
        (["--model_path", shipped_int8], "an ONNX model: pass --backend onnx"),
        (["--backend", "onnx"], "--backend onnx needs --model_path MODEL.onnx"),
    ):
        proc = run_ferkit("evaluate", *extra, "--data", tiny_real_csv, "--wandb", "disabled")
        assert proc.returncode == 1 and needle in proc.stderr and "Traceback" not in proc.stderr
    proc = run_ferkit(
        "export", "--model_path", tiny_checkpoint, "-o", tmp_path / "x.onnx", "--quantize", "int8",
        cwd=tmp_path, env={"FERKIT_DATA": None},
    )  # fmt: skip
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1
    assert "--quantize int8 calibrates on FER2013 Training faces: pass --data" in proc.stderr


# ----------------------------------------------------------------------------- failures
def test_missing_or_foreign_model(tmp_path):
    with pytest.raises(FerkitError, match="not found"):
        export_onnx(str(tmp_path / "none.pth"), tmp_path / "m.onnx")
    foreign = tmp_path / "notes.pth"
    foreign.write_text("not a checkpoint\n")
    with pytest.raises(FerkitError, match="notes.pth"):
        export_onnx(str(foreign), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_unwritable_output_and_bad_opset(tiny_checkpoint, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(FerkitError, match="cannot write"):
        export_onnx(str(tiny_checkpoint), blocker / "m.onnx")
    with pytest.raises(FerkitError, match="is a folder"):
        export_onnx(str(tiny_checkpoint), tmp_path)
    with pytest.raises(FerkitError, match="--opset 11"):
        export_onnx(str(tiny_checkpoint), tmp_path / "m.onnx", opset=11)


def test_failed_parity_check_writes_nothing(tiny_checkpoint, tiny_onnx, tmp_path, monkeypatch):
    """Over the tolerance: an error, the previous file untouched, no temporary file left."""
    import ferkit.shipping.export as export

    out, _ = tiny_onnx
    monkeypatch.setattr(export, "_export_proto", lambda *a: onnx.load(str(out)))
    monkeypatch.setattr(export, "PARITY_TOLERANCE", -1.0)
    target = tmp_path / "m.onnx"
    target.write_bytes(b"previous")
    with pytest.raises(FerkitError, match="disagree"):
        export_onnx(str(tiny_checkpoint), target)
    assert target.read_bytes() == b"previous" and [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_onnx_predictor_bad_files(tmp_path, tiny_onnx):
    with pytest.raises(FerkitError, match="none.onnx: ONNX model not found"):
        OnnxPredictor(tmp_path / "none.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(tiny_onnx[0].read_bytes()[:500])
    with pytest.raises(FerkitError, match="corrupt.onnx: not a readable ONNX model"):
        OnnxPredictor(corrupt)
    h = onnx.helper
    graph = h.make_graph(
        [h.make_node("Identity", ["x"], ["y"])],
        "foreign",
        [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 3])],
        [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 3])],
    )
    foreign = tmp_path / "foreign.onnx"
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 18)]), str(foreign))
    with pytest.raises(FerkitError, match="foreign.onnx: not a ferkit face model"):
        OnnxPredictor(foreign)
    with pytest.raises(FerkitError, match="uint8 faces"):
        OnnxPredictor(tiny_onnx[0]).predict(np.zeros((2, 64, 64), np.uint8))


def test_missing_onnxruntime_says_how_to_install(tiny_onnx, tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as when it is not installed
    with pytest.raises(FerkitError, match=r"pip install 'ferkit\[onnx\]'"):
        OnnxPredictor(tiny_onnx[0])
    with pytest.raises(FerkitError, match=r"pip install 'ferkit\[onnx\]'"):
        export_onnx(str(tiny_checkpoint), tmp_path / "m.onnx")


def test_parity_faces(tiny_real_csv, tmp_path, monkeypatch):
    faces, what = parity_faces(export_data(str(tiny_real_csv), False), 64)
    assert faces.shape == (64, 48, 48) and faces.dtype == np.uint8 and "64 PublicTest faces" in what
    monkeypatch.delenv("FERKIT_DATA", raising=False)
    monkeypatch.chdir(tmp_path)  # no ./data/fer2013.csv here
    faces, what = parity_faces(export_data(None, False), 64)
    assert faces is None and "random faces" in what and "--data" in what


# ----------------------------------------------------------------------------- CLI (`ferkit export`)
def test_cli_export(run_ferkit, tiny_checkpoint, tiny_real_csv, tmp_path):
    out = tmp_path / "cli.onnx"
    proc = run_ferkit(
        "export", "--model_path", tiny_checkpoint, "--output", out, "--data", tiny_real_csv, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == str(out) and out.is_file()
    assert "64 PublicTest faces" in lines[1] and "opset" in lines[1]
    diff = float(lines[1].split("difference ")[1].split()[0])
    assert diff < TOL
    assert OnnxPredictor(out).predict(np.zeros((3, 48, 48), np.uint8)).shape == (3, NUM_CLASSES)


@pytest.mark.parametrize("case", ["missing model", "foreign file", "onnx as model", "unwritable output"])
def test_cli_export_errors_are_one_line(case, run_ferkit, tiny_checkpoint, tiny_onnx, tmp_path):
    model, out = str(tiny_checkpoint), tmp_path / "m.onnx"
    if case == "missing model":
        model, expected = str(tmp_path / "none.pth"), "none.pth: checkpoint not found"
    elif case == "foreign file":
        (tmp_path / "notes.pth").write_text("not a checkpoint\n")
        model, expected = str(tmp_path / "notes.pth"), "notes.pth: "
    elif case == "onnx as model":
        model, expected = str(tiny_onnx[0]), "tiny.onnx: already ONNX"
    else:
        (tmp_path / "file").write_text("x")
        out, expected = tmp_path / "file" / "m.onnx", "cannot write there (" + str(tmp_path / "file")
    proc = run_ferkit(
        "export", "--model_path", model, "--output", out, cwd=tmp_path, env={"FERKIT_DATA": None}
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.startswith("ferkit: error: ") and len(proc.stderr.strip().splitlines()) == 1
    assert expected in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()
