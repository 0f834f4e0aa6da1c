"""The bad-input corpus: every case is refused the same way, and nothing on disk changes.

Each case builds its files in a fresh folder, runs ``zerop-deploy quantize`` (or another command)
and checks the whole contract at once: exit code 2, exactly one line on stderr that names the
culprit, no traceback, every file in the folder byte-identical afterwards (inputs untouched) and no
new file (no output, report, checkpoint or temp file left behind). The files are generated here;
no binary is committed.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from tests.helpers import log_of_one_minus_input_model, small_cnn, with_external_data
from zerop_deploy.cli.main import main
from zerop_deploy.io import output_lock

Case = Callable[[Path], tuple[list[str], str]]
"""``case(folder) -> (command line, text the error line must contain)``."""

MARKER = "UNPICKLED"
"""A file that a crafted pickle creates when it is loaded: it must never appear."""


class _Touch:
    """Pickles to a call of ``Path.touch(MARKER)``: loading it is the attack."""

    def __init__(self, folder: Path):
        self.path = folder / MARKER

    def __reduce__(self):
        return (Path.touch, (self.path,))


def _model(d: Path, proto: onnx.ModelProto | None = None, name: str = "m.onnx") -> Path:
    p = d / name
    p.write_bytes((proto or small_cnn()).SerializeToString())
    return p


def _images(d: Path, name: str = "x.npz", **arrays) -> Path:
    arrays.setdefault("images", np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3), np.uint8))
    np.savez(d / name, **arrays)
    return d / name


def _quantize(d: Path, model: Path, *extra: str, proxy: Path | str | None = None) -> list[str]:
    """``quantize MODEL --proxy P -o OUT/m.int4.onnx --steps 1 --quiet EXTRA``; OUT exists."""
    (d / "out").mkdir(exist_ok=True)
    proxy = proxy if proxy is not None else _images(d)
    return [
        "quantize", str(model), "--proxy", str(proxy), "-o", str(d / "out" / "m.int4.onnx"),
        "--steps", "1", "--quiet", *extra,
    ]  # fmt: skip


# --- models ----------------------------------------------------------------------------------


def _bytes_model(data: bytes, name: str = "m.onnx") -> Case:
    def case(d):
        (d / name).write_bytes(data)
        return _quantize(d, d / name), name

    return case


def _truncated(d):
    data = small_cnn().SerializeToString()
    (d / "t.onnx").write_bytes(data[: len(data) // 2])
    return _quantize(d, d / "t.onnx"), "t.onnx"


def _npz_as_model(d):
    return _quantize(d, _images(d, "weights.onnx.npz")), "weights.onnx.npz"


def _pickle_as_model(d):
    # a torch-style checkpoint handed over as the model: it must be refused, never unpickled
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps(_Touch(d)))
    (d / "model.pt").write_bytes(buf.getvalue())
    return _quantize(d, d / "model.pt"), "model.pt"


def _graph_model(nodes, inputs, outputs, inits=(), opsets=(("", 17),)) -> onnx.ModelProto:
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
        [numpy_helper.from_array(v, n) for n, v in inits],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid(dom, v) for dom, v in opsets])
    m.ir_version = 8
    return m


_W = np.random.default_rng(0).normal(size=(4, 3, 3, 3)).astype(np.float32)


def _cycle(d):
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["a"], name="conv_a", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["a", "c"], ["b"], name="add_b"),
        helper.make_node("Relu", ["b"], ["c"], name="relu_c"),
    ]
    m = _graph_model(nodes, [("x", [1, 3, 16, 16])], [("c", [1, 4, 16, 16])], [("w", _W)])
    return _quantize(d, _model(d, m)), "cycle"


def _dangling(d):
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["a"], name="conv_a", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["a", "ghost"], ["y"], name="add_y"),
    ]
    m = _graph_model(nodes, [("x", [1, 3, 16, 16])], [("y", [1, 4, 16, 16])], [("w", _W)])
    return _quantize(d, _model(d, m)), "ghost"


def _unknown_domain(d):
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["a"], name="conv_a", pads=[1, 1, 1, 1]),
        helper.make_node("Frobnicate", ["a"], ["y"], name="frob_1", domain="com.example"),
    ]
    m = _graph_model(
        nodes,
        [("x", [1, 3, 16, 16])],
        [("y", [1, 4, 16, 16])],
        [("w", _W)],
        opsets=(("", 17), ("com.example", 1)),
    )
    return _quantize(d, _model(d, m)), "frob_1"


def _input_dims(dims) -> Case:
    def case(d):
        m = small_cnn()
        shape = m.graph.input[0].type.tensor_type.shape
        for i, v in enumerate(dims):
            if isinstance(v, str):
                shape.dim[i].dim_param = v
            else:
                shape.dim[i].dim_value = v
        return _quantize(d, _model(d, m)), "'input'"

    return case


def _nothing_to_quantize(d):
    # no BatchNorm and no Conv: Relu and Add only
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="relu_a"),
        helper.make_node("Add", ["a", "x"], ["y"], name="add_y"),
    ]
    m = _graph_model(nodes, [("x", [1, 3, 16, 16])], [("y", [1, 3, 16, 16])])
    return _quantize(d, _model(d, m)), "no layer to quantize"


def _external(location: str, *, write: int | None = None, outside: bool = False) -> Case:
    """A MatMul model whose weight lives in an external file at ``location``."""

    def case(d):
        path, data = with_external_data(d, location)
        if write is not None:
            (path.parent / "w.bin").write_bytes(data[:write])
        if outside:
            (d / "outside.bin").write_bytes(data)
            os.symlink(d / "outside.bin", path.parent / "link.bin")
        return _quantize(d, path), "ext.onnx"

    return case


def _weight(name: str, value: float, needle: str) -> Case:
    """small_cnn with ``value`` written into two entries of its initializer ``name``."""

    def case(d):
        m = small_cnn()
        t = next(t for t in m.graph.initializer if t.name == name)
        a = numpy_helper.to_array(t).copy()
        a.reshape(-1)[:2] = value
        t.CopyFrom(numpy_helper.from_array(a, name))
        return _quantize(d, _model(d, m)), needle

    return case


def _nonfinite_on_images(d):
    # finite weights, finite on the random inputs of the load and preflight checks, but -inf on
    # the white pixels real images have: refused at the first pass over the proxy images
    m = log_of_one_minus_input_model()
    return _quantize(d, _model(d, m)), "proxy images: node 'log_b' (Log) is the first"


def _layer_config(layers: dict, needle: str) -> Case:
    def case(d):
        (d / "layers.json").write_text(json.dumps({"layers": layers}))
        return _quantize(d, _model(d), "--layer-config", str(d / "layers.json")), needle

    return case


# --- images ----------------------------------------------------------------------------------


def _folder(fill: Callable[[Path], None], needle: str) -> Case:
    def case(d):
        f = d / "imgs"
        f.mkdir()
        fill(f)
        return _quantize(d, _model(d), proxy=f), needle

    return case


def _nothing(f: Path) -> None:
    pass


def _special_entries(f: Path) -> None:
    # a named pipe (reading it would block forever), a folder and a dangling link, all named .png
    os.mkfifo(f / "pipe.png")
    (f / "dir.png").mkdir()
    os.symlink(f / "gone.png", f / "dangling.png")


def _broken_images(f: Path) -> None:
    (f / "zero.png").write_bytes(b"")
    (f / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(200))
    (f / "text.png").write_text("not an image")
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = (50_000).to_bytes(4, "big") * 2  # IHDR claims 50,000 x 50,000 pixels
    (f / "bomb.png").write_bytes(bytes(data))


def _npz(needle: str, **arrays) -> Case:
    def case(d):
        return _quantize(d, _model(d), proxy=_images(d, "p.npz", **arrays)), needle

    return case


def _npz_without_images(d):
    np.savez(d / "p.npz", pixels=np.zeros((4, 16, 16, 3), np.uint8))
    return _quantize(d, _model(d), proxy=d / "p.npz"), "no 'images'"


def _pickled_npz(d):
    arr = np.empty(1, dtype=object)
    arr[0] = _Touch(d)
    np.save(d / "p.npy", arr, allow_pickle=True)
    return _quantize(d, _model(d), proxy=d / "p.npy"), "p.npy"


def _eval_without_labels(d):
    return _quantize(d, _model(d), "--eval", str(_images(d, "e.npz"))), "e.npz"


# --- outputs ---------------------------------------------------------------------------------


def _output_is_input(d):
    m = _model(d)
    return ["quantize", str(m), "--proxy", str(_images(d)), "-o", str(m), "--steps", "1"], "m.onnx"


def _output_folder_missing(d):
    args = _quantize(d, _model(d))
    args[args.index("-o") + 1] = str(d / "nowhere" / "m.int4.onnx")
    return args, "nowhere"


def _report_is_input(d):
    m = _model(d)
    return _quantize(d, m, "--report", str(d / "x.npz")), "x.npz"


def _crafted_checkpoint(d):
    # --resume reads the checkpoint beside the output: a crafted one must not run code
    args = _quantize(d, _model(d), "--resume")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("m.int4.onnx/data.pkl", pickle.dumps({"student": _Touch(d)}))
        z.writestr("m.int4.onnx/version", "3\n")
    (d / "out" / "m.int4.onnx.ckpt").write_bytes(buf.getvalue())
    return args, "m.int4.onnx.ckpt"


# --- values ----------------------------------------------------------------------------------


def _option(*extra: str, needle: str | None = None) -> Case:
    def case(d):
        return _quantize(d, _model(d), *extra), needle or extra[0]

    return case


# --- the other commands ----------------------------------------------------------------------


def _synth_over_model(d):
    m = _model(d)
    return ["synth", str(m), "-n", "4", "-o", str(m)], "is the input"


def _synth_over_data(d):
    m = _model(d)
    return ["synth", str(m), "-n", "4", "-o", str(_images(d)), "--seed", "-2"], "--seed"


def _select_bad_candidate(d):
    p5 = _images(d, "five.npz", images=np.zeros((4, 16, 16, 5), np.uint8))
    return ["select-proxy", str(_model(d)), str(_images(d)), str(p5)], "five.npz"


def _validate_truncated(d):
    data = small_cnn().SerializeToString()
    (d / "q.onnx").write_bytes(data[:100])
    args = ["validate", str(d / "q.onnx"), "--reference", str(_model(d))]
    return [*args, "--data", str(_images(d))], "q.onnx"


def _inspect_cycle(d):
    args, needle = _cycle(d)
    return ["inspect", args[1]], needle


def _bench_dangling(d):
    args, needle = _dangling(d)
    return ["bench", args[1]], needle


CASES: dict[str, Case] = {
    # models
    "model-empty": _bytes_model(b""),
    "model-truncated": _truncated,
    "model-random-bytes": _bytes_model(np.random.default_rng(1).bytes(4096)),
    "model-wrong-extension-npz": _npz_as_model,
    "model-pickle-checkpoint": _pickle_as_model,
    "model-missing": lambda d: (_quantize(d, d / "absent.onnx"), "absent.onnx"),
    "model-is-a-folder": lambda d: (_quantize(d, d), str(d)),
    "graph-cycle": _cycle,
    "graph-dangling-input": _dangling,
    "graph-unknown-domain": _unknown_domain,
    "input-dynamic-dims": _input_dims([1, 3, "H", "W"]),
    "input-zero-sized-dim": _input_dims([1, 3, 0, 16]),
    "input-zero-channels": _input_dims([1, 0, 16, 16]),
    "no-batchnorm-no-conv": _nothing_to_quantize,
    "external-missing": _external("w.bin"),
    "external-too-short": _external("w.bin", write=100),
    "external-parent-dir": _external("../outside.bin", outside=True),
    "external-absolute": _external("/etc/passwd"),
    "external-symlink-out": _external("link.bin", outside=True),
    "weights-nan": _weight("0.weight", np.nan, "'0.weight' holds 2 NaN values"),
    "weights-inf": _weight("8.weight", -np.inf, "'8.weight' holds 2 infinite values"),
    "batchnorm-negative-variance": _weight("1.running_var", -1.0, "2 negative values"),
    "nonfinite-on-real-images": _nonfinite_on_images,
    "layer-config-unknown-node": _layer_config(
        {"/0/Conv_": {"wbits": 8}},
        "--layer-config: the model has no node '/0/Conv_'; did you mean '/0/Conv'",
    ),
    "layer-config-not-quantizable": _layer_config(
        {"/1/BatchNormalization": {"skip": True}},
        "node '/1/BatchNormalization' is a BatchNormalization, not a quantizable layer",
    ),
    # image sources
    "folder-empty": _folder(_nothing, "imgs"),
    "folder-special-entries": _folder(_special_entries, "imgs"),
    "folder-broken-images": _folder(_broken_images, "imgs"),
    "npz-2-channels": _npz("2 channels", images=np.zeros((4, 16, 16, 2), np.uint8)),
    "npz-5-channels": _npz("5 channels", images=np.zeros((4, 16, 16, 5), np.uint8)),
    "npz-no-images": _npz_without_images,
    "npz-float-dtype": _npz("uint8", images=np.zeros((4, 16, 16, 3), np.float32)),
    "npz-rank-2": _npz("N x H x W x C", images=np.zeros((4, 16), np.uint8)),
    "npz-zero-images": _npz("no images", images=np.zeros((0, 16, 16, 3), np.uint8)),
    "npy-pickled-objects": _pickled_npz,
    "eval-without-labels": _eval_without_labels,
    # outputs
    "output-is-the-input": _output_is_input,
    "output-folder-missing": _output_folder_missing,
    "report-is-an-input": _report_is_input,
    "checkpoint-crafted-pickle": _crafted_checkpoint,
    # values
    "steps-0": _option("--steps", "0"),
    "steps-negative": _option("--steps", "-3"),
    "steps-absurd": _option("--steps", str(10**12)),
    "batch-size-0": _option("--batch-size", "0"),
    "batch-size-absurd": _option("--batch-size", str(10**9)),
    "lr-negative": _option("--lr", "-1"),
    "lr-nan": _option("--lr", "nan"),
    "lr-inf": _option("--lr", "inf"),
    "bits-3": _option("--bits", "3"),
    "sd-ratio-above-1": _option("--sd-ratio", "1.5"),
    "synthetic-negative": _option("--synthetic", "-5"),
    "proxy-images-0": _option("--proxy-images", "0"),
    "time-budget-0": _option("--time-budget", "0"),
    "time-budget-nan": _option("--time-budget", "nan"),
    "checkpoint-every-negative": _option("--checkpoint-every", "-1"),
    "feature-weight-negative": _option("--feature-weight", "-1"),
    "min-agreement-above-1": _option("--min-agreement", "2"),
    "mean-not-numbers": _option("--mean", "a,b,c"),
    "mean-wrong-count": _option("--mean", "0.5,0.5", needle="--mean"),
    "std-zero": _option("--std", "0,1,1"),
    "samples-0": _option("--samples", "0"),
    "seed-negative": _option("--seed", "-1"),
    "device-unknown": _option("--device", "tpu"),
    # the other commands
    "synth-output-is-the-model": _synth_over_model,
    "synth-negative-seed": _synth_over_data,
    "select-proxy-5-channel-candidate": _select_bad_candidate,
    "validate-truncated-model": _validate_truncated,
    "inspect-cycle": _inspect_cycle,
    "bench-dangling-input": _bench_dangling,
}


def _tree(root: Path) -> dict[str, str]:
    """Every file and link under ``root`` with the hash of its bytes (links: their target)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "link:" + os.readlink(p)
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = "special"
    return out


def check_refused(d: Path, args: list[str], needle: str) -> str:
    """Run ``args`` and check the whole bad-input contract; returns the error line."""
    before = _tree(d)
    result = CliRunner().invoke(main, args)
    err = result.stderr
    assert result.exit_code == 2, (result.exit_code, err, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception  # not a crash
    assert err.count("\n") == 1 and err.startswith(("zerop-deploy: error: ", "Error: ")), err
    assert "Traceback" not in err and result.stdout == ""
    assert needle in err, f"{needle!r} not in {err!r}"
    assert _tree(d) == before, "an input changed or an output was left behind"
    assert not (d / MARKER).exists(), "a pickle from a user file was loaded"
    return err


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_refused_and_leaves_the_folder_as_it_was(tmp_path, name):
    args, needle = CASES[name](tmp_path)
    check_refused(tmp_path, args, needle)


def test_output_in_a_read_only_folder_is_refused_before_any_work(tmp_path):
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
    else:  # root writes through file modes; /sys is a folder where even root cannot create files
        ro = Path("/sys")
        if not ro.is_dir() or _can_create(ro):
            pytest.skip("no read-only folder available as root")
    args = _quantize(tmp_path, _model(tmp_path))
    args[args.index("-o") + 1] = str(ro / "m.int4.onnx")
    check_refused(tmp_path, args, str(ro))


def _can_create(folder: Path) -> bool:
    """Checked here independently of the tool's own probe, which is what the test is about."""
    try:
        (folder / ".zerop-probe").touch()
    except OSError:
        return False
    (folder / ".zerop-probe").unlink()
    return True


def test_disk_full_while_writing_keeps_only_the_checkpoint(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    args = _quantize(tmp_path, _model(tmp_path))
    before = _tree(tmp_path)
    monkeypatch.setattr("zerop_deploy.io.os.fsync", full)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.exception
    err = result.stderr
    assert err.count("\n") == 1 and "No space left on device" in err and "m.int4.onnx" in err
    after = _tree(tmp_path)
    # the finished fine-tuning is kept for --resume; nothing else was added or changed
    assert set(after) - set(before) == {"out/m.int4.onnx.ckpt"}, sorted(set(after) - set(before))
    assert {k: after[k] for k in before} == before and "--resume" in err


@pytest.mark.parametrize("command", ["quantize", "synth"])
def test_a_second_run_on_an_output_being_written_is_refused(tmp_path, command):
    # two runs on one output used to share its checkpoint and temp files: one of them failed late
    out = tmp_path / "out" / "m.int4.onnx"
    args = _quantize(tmp_path, _model(tmp_path))
    if command == "synth":
        args = ["synth", args[1], "-n", "4", "--iterations", "1", "-o", str(out)]
    with output_lock(out):
        err = check_refused(tmp_path, args, f"{out}: another zerop-deploy run is writing this")
    assert f"(pid {os.getpid()}); wait for it to finish or choose another -o" in err
    assert list((tmp_path / "out").iterdir()) == []  # the lock went with the first run
