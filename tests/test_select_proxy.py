"""select-proxy (API and CLI) and quantize's --proxy auto/builtin/PATH... choices."""

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from PIL import Image

from zerop_deploy.cli.main import main


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture()
def files(tmp_path, cnn_bn, cnn_folded):
    onnx.save(cnn_bn, str(tmp_path / "m.onnx"))
    onnx.save(cnn_folded, str(tmp_path / "f.onnx"))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "noise.npz", images=rng.integers(0, 256, (40, 16, 16, 3), np.uint8))
    smooth = np.repeat(np.linspace(0, 255, 16, dtype=np.uint8)[None, :, None, None], 3, 3)
    np.savez(tmp_path / "smooth.npz", images=np.tile(smooth, (30, 1, 16, 1)))
    return tmp_path


def test_ranking_json_table_and_plot(files):
    code, out, err = run(
        "select-proxy", files / "m.onnx", files / "noise.npz", files / "smooth.npz", "builtin",
        "--samples", "16", "--json", "--plot", files / "r.png",
    )  # fmt: skip
    assert code == 0, err
    doc = json.loads(out)
    assert doc["method"] == "bns" and doc["samples"] == 16
    ranking = doc["ranking"]
    assert [r["images"] for r in ranking] == [16, 16, 16]
    assert {r["candidate"] for r in ranking} == {
        str(files / "noise.npz"), str(files / "smooth.npz"), "builtin"
    }  # fmt: skip
    assert [r["distance"] for r in ranking] == sorted(r["distance"] for r in ranking)
    assert (files / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, out, _ = run("select-proxy", files / "m.onnx", files / "noise.npz", "--samples", "8")
    assert code == 0 and "BNS distance" in out and "noise.npz" in out


def test_folded_model_falls_back_to_the_output_score(files):
    code, out, err = run(
        "select-proxy", files / "f.onnx", files / "noise.npz", files / "smooth.npz", "--json"
    )
    assert code == 0, err
    doc = json.loads(out)
    assert doc["method"] == "output" and "folded" in doc["note"]
    assert all({"confidence", "evenness"} <= set(r) for r in doc["ranking"])


def _bad_inputs(d):
    (d / "empty").mkdir()
    (d / "texts").mkdir()
    (d / "texts" / "a.txt").write_text("not an image")
    (d / "broken").mkdir()
    (d / "broken" / "a.png").write_bytes(b"\x89PNG broken")
    np.savez(d / "noimg.npz", pixels=np.zeros((2, 4, 4, 3), np.uint8))
    np.savez(d / "c2.npz", images=np.zeros((2, 4, 4, 2), np.uint8))
    np.savez(d / "c5.npz", images=np.zeros((2, 4, 4, 5), np.uint8))
    Image.new("RGB", (8, 8)).save(d / "ok.png")


@pytest.mark.parametrize(
    "candidate, extra, needle",
    [
        ("empty", [], "no image files"),
        ("texts", [], "no image files"),
        ("broken", [], "could be read"),
        ("noimg.npz", [], "no 'images'"),
        ("c2.npz", [], "2 channels"),
        ("c5.npz", [], "5 channels"),
        ("missing.npz", [], "no such file"),
        ("noise.npz", ["--samples", "0"], "--samples"),
        ("noise.npz", ["--plot", "nofolder/r.png"], "does not exist"),
    ],
)
def test_bad_candidates_are_one_line_exit_2(files, candidate, extra, needle):
    _bad_inputs(files)
    extra = [files / e if "/" in e else e for e in extra]
    code, out, err = run("select-proxy", files / "m.onnx", files / candidate, *extra)
    assert code == 2, err
    assert needle in err and len(err.strip().splitlines()) == 1 and out == ""


def test_quantize_proxy_auto_records_the_ranking(files):
    code, out, err = run(
        "quantize", files / "m.onnx", "-o", files / "q.onnx", "--proxy", "auto",
        "--candidates", files / "noise.npz", files / "smooth.npz",
        "--samples", "16", "--steps", "2", "--json", "--quiet",
    )  # fmt: skip
    assert code == 0, err
    proxy = json.loads(out)["proxy"]
    assert proxy["method"] == "bns" and len(proxy["ranking"]) == 2
    assert proxy["chosen"] == proxy["ranking"][0]["candidate"]
    assert proxy["images"] + proxy["holdout"] == 30 if "smooth" in proxy["chosen"] else 40


def test_quantize_pools_several_sources_and_limits_them(files):
    code, out, err = run(
        "quantize", files / "m.onnx", "-o", files / "q.onnx",
        "--proxy", files / "noise.npz", files / "smooth.npz", "--proxy-images", "50",
        "--steps", "2", "--json", "--quiet",
    )  # fmt: skip
    assert code == 0, err
    proxy = json.loads(out)["proxy"]
    assert proxy["method"] == "path" and proxy["total_images"] == 70
    assert proxy["images"] + proxy["holdout"] == 50  # 25 from each source
    assert (
        str(files / "noise.npz") in proxy["chosen"] and str(files / "smooth.npz") in proxy["chosen"]
    )


def test_quantize_defaults_to_the_builtin_pool_and_plots_layers(files):
    code, out, err = run(
        "quantize", files / "m.onnx", "-o", files / "q.onnx", "--steps", "2", "--json", "--quiet",
        "--plot-layers", files / "layers.png",
    )  # fmt: skip
    assert code == 0, err
    doc = json.loads(out)
    assert all(isinstance(entry["output_sqnr_db"], float) for entry in doc["layers"])
    assert (files / "layers.png").read_bytes()[:4] == b"\x89PNG"
    proxy = doc["proxy"]
    assert proxy["method"] == "builtin" and proxy["chosen"] == "builtin"
    assert proxy["images"] + proxy["holdout"] == 4096
