"""The one image -> model-input transform: ImageNet resize + center crop, options, checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from tests.helpers import shared_path
from zerop_deploy.data.preprocess import Preprocess
from zerop_deploy.errors import ConfigError


def _ramp(h: int, w: int) -> np.ndarray:
    """A 1 x h x w x 3 image whose pixels say where they are (distinct rows and columns)."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([y % 256, x % 256, (y + x) % 256], axis=-1)[None].astype(np.uint8)


def _reference(img: np.ndarray, short: int, h: int, w: int, mode: str) -> torch.Tensor:
    """Resize the shorter side to ``short`` (antialiased), crop the center h x w."""
    x = torch.from_numpy(img).permute(0, 3, 1, 2).float()
    scale = short / min(x.shape[2:])
    size = (round(x.shape[2] * scale), round(x.shape[3] * scale))
    y = F.interpolate(x, size=size, mode=mode, antialias=True, align_corners=False)
    top, left = (size[0] - h) // 2, (size[1] - w) // 2
    return y[:, :, top : top + h, left : left + w].round().clamp(0, 255).to(torch.uint8)


def test_imagenet_default_is_resize_256_center_crop_224_bicubic():
    img = _ramp(300, 400)
    got = Preprocess().fit(img, (3, 224, 224))
    assert torch.equal(got, _reference(img, 256, 224, 224, "bicubic"))
    assert Preprocess().describe((3, 224, 224)) == {
        "input": [224, 224], "resize_shorter_side": 256, "crop_ratio": 0.875,
        "interpolation": "bicubic", "untouched": "images already at the input size",
    }  # fmt: skip


@pytest.mark.parametrize(
    "pre",
    [Preprocess(resize=256, crop=224), Preprocess(crop_ratio=0.875, interpolation="bicubic")],
)
def test_resize_crop_and_crop_ratio_are_the_same_transform(pre):
    img = _ramp(333, 250)
    assert torch.equal(pre.fit(img, (3, 224, 224)), _reference(img, 256, 224, 224, "bicubic"))


def test_ratio_scales_with_the_input_and_bilinear_is_available():
    img = _ramp(260, 300)
    pre = Preprocess(resize=256, crop=224, interpolation="bilinear")
    assert torch.equal(pre.fit(img, (3, 160, 160)), _reference(img, 183, 160, 160, "bilinear"))


def test_small_inputs_keep_whole_image_bilinear_fit():
    """CIFAR-size inputs: shorter side straight to the input (ratio 1), bilinear, as always."""
    img = _ramp(64, 80)
    assert Preprocess().ratio((3, 32, 32)) == 1.0 and Preprocess().mode((3, 32, 32)) == "bilinear"
    assert torch.equal(Preprocess().fit(img, (3, 32, 32)), _reference(img, 32, 32, 32, "bilinear"))


def test_images_at_the_input_size_are_untouched():
    img = _ramp(224, 224)
    out = Preprocess().fit(img, (3, 224, 224))
    assert torch.equal(out, torch.from_numpy(img).permute(0, 3, 1, 2))


def test_small_images_are_resized_up_never_refused():
    out = Preprocess().fit(_ramp(40, 90), (3, 224, 224))
    assert out.shape == (1, 3, 224, 224)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"resize": 200, "crop": 224}, "larger than --resize"),
        ({"resize": 256}, "go together"),
        ({"crop_ratio": 0.875, "resize": 256, "crop": 224}, "not both"),
        ({"crop_ratio": 1.5}, "crop-ratio 1.5"),
        ({"crop_ratio": 0.0}, "crop-ratio 0.0"),
        ({"resize": 0, "crop": 0}, ">= 1"),
        ({"interpolation": "nearest"}, "bilinear or bicubic"),
    ],
)
def test_senseless_values_are_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        Preprocess(**kwargs)


def test_cli_refuses_a_crop_bigger_than_the_resize_with_one_line(tmp_path, cnn_bn):
    import onnx

    from zerop_deploy.cli.main import main

    onnx.save(cnn_bn, str(tmp_path / "m.onnx"))
    res = CliRunner().invoke(main, ["quantize", str(tmp_path / "m.onnx"), "--resize", "200",
                                    "--crop", "224"])  # fmt: skip
    assert res.exit_code == 2
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "--crop 224 is larger than --resize 200" in lines[0]


@pytest.mark.shared
@pytest.mark.slow
def test_lite0_fp32_top1_on_imagenet_eval_is_the_standard_figure():
    """87.5 % with resize 256 + center crop 224 (the old whole-image fit gave 85.1 %)."""
    import onnxruntime as ort

    from zerop_deploy.data.preprocess import normalize
    from zerop_deploy.data.sources import iter_batches, open_source

    model = shared_path("models", "efficientnet_lite0_imagenet.onnx")
    folder = shared_path("data", "imagenet_eval")
    if not (model.exists() and folder.exists()):
        pytest.skip("needs ../shared: models/efficientnet_lite0_imagenet.onnx, data/imagenet_eval")
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    correct = n = 0
    for chunk in iter_batches(open_source(folder), (3, 224, 224), batch=250):
        logits = sess.run(None, {"input": normalize(chunk.images).numpy()})[0]
        correct += int((logits.argmax(1) == chunk.labels).sum())
        n += len(chunk.labels)
    assert n == 1000 and correct == 875
