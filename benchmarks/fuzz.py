"""Fuzz the ONNX loader and the image loader with mutated files.

Seeds: small valid models (BN kept and folded, the demo CNN) and valid image sources (.npz, .npy,
PNG and JPEG folders). Each input is a mutation of a seed: random byte flips, truncation, spliced
random bytes, an all-random file, or a structural change of the ONNX graph (shapes, attributes,
dropped or renamed inputs, duplicated nodes). Every input goes through the real entry points:
``read_model`` + ``convert_model`` + ``check_parity`` for models, ``open_source`` + ``load_pool``
for images. A clean result is success or a :class:`~zerop_deploy.errors.ZeropError` (the CLI's
exit 2); anything else is a crash. Inputs run in a forked worker, so a hard crash (signal) is
caught and counted too; crashing inputs are copied to ``$TMPDIR/zerop-fuzz-crash-*``.

    python benchmarks/fuzz.py --minutes 10 [--write]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import onnx
from _common import ROOT, write_section

from zerop_deploy.errors import ZeropError

RESULTS = ROOT / "benchmarks" / "results" / "fuzz.json"


def _model_seeds() -> list[bytes]:
    import torch

    from zerop_deploy.demo import build_demo_network, onnx_bytes

    net = build_demo_network(0, in_channels=1)
    small = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(), torch.nn.Flatten()
    ).eval()
    return [
        onnx_bytes(net, keep_bn=True),
        onnx_bytes(net, keep_bn=False),
        onnx_bytes(small, (1, 3, 8, 8), keep_bn=True),
    ]


def _image_seeds() -> dict[str, bytes]:
    from PIL import Image

    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (6, 12, 12, 3), np.uint8)
    out = {}
    buf = io.BytesIO()
    np.savez(buf, images=imgs, labels=np.arange(6))
    out[".npz"] = buf.getvalue()
    buf = io.BytesIO()
    np.save(buf, imgs)
    out[".npy"] = buf.getvalue()
    for fmt in ("PNG", "JPEG"):
        buf = io.BytesIO()
        Image.fromarray(imgs[0]).save(buf, format=fmt)
        out["." + fmt.lower()] = buf.getvalue()
    return out


def _mutate_bytes(data: bytes, rnd: random.Random) -> bytes:
    b = bytearray(data)
    kind = rnd.randrange(5)
    if kind == 0 and b:  # flip bytes
        for _ in range(rnd.randint(1, 16)):
            b[rnd.randrange(len(b))] = rnd.randrange(256)
    elif kind == 1:  # truncate
        b = b[: rnd.randrange(len(b) + 1)]
    elif kind == 2:  # splice random bytes
        at = rnd.randrange(len(b) + 1)
        b[at:at] = os.urandom(rnd.randint(1, 64))
    elif kind == 3:  # all random
        b = bytearray(os.urandom(rnd.randint(0, 4096)))
    else:  # duplicate a chunk
        if b:
            at = rnd.randrange(len(b))
            b[at:at] = b[at : at + rnd.randint(1, 256)]
    return bytes(b)


def _mutate_graph(data: bytes, rnd: random.Random) -> bytes:
    m = onnx.load_from_string(data)
    g = m.graph
    kind = rnd.randrange(6)
    if kind == 0 and g.input:  # shapes
        dims = g.input[0].type.tensor_type.shape.dim
        if dims:
            d = dims[rnd.randrange(len(dims))]
            d.dim_value = rnd.choice([0, 1, 3, 7, 100000])
    elif kind == 1 and g.node:  # attributes
        node = g.node[rnd.randrange(len(g.node))]
        if node.attribute:
            a = node.attribute[rnd.randrange(len(node.attribute))]
            if a.ints:
                a.ints[rnd.randrange(len(a.ints))] = rnd.choice([-1, 0, 2, 99])
            else:
                a.f, a.i = rnd.choice([-1.0, 0.0, 1e30]), rnd.choice([-5, 0, 7])
    elif kind == 2 and g.node:  # rename an input (dangling edge)
        node = g.node[rnd.randrange(len(g.node))]
        if node.input:
            node.input[rnd.randrange(len(node.input))] = "nowhere"
    elif kind == 3 and g.node:  # duplicate a node (two producers, maybe a cycle)
        g.node.append(g.node[rnd.randrange(len(g.node))])
    elif kind == 4 and g.node:  # unknown op / domain
        node = g.node[rnd.randrange(len(g.node))]
        node.op_type, node.domain = rnd.choice([("Foo", ""), ("Conv", "x.y"), ("Relu", "ai.z")])
    elif g.initializer:  # corrupt a weight's shape
        t = g.initializer[rnd.randrange(len(g.initializer))]
        if t.dims:
            t.dims[0] = t.dims[0] + rnd.choice([-1, 1, 1000])
    return m.SerializeToString()


def _try_model(path: Path) -> None:
    from zerop_deploy.load.parity import check_parity
    from zerop_deploy.load.read import read_model
    from zerop_deploy.load.to_torch import convert_model

    proto = read_model(path)
    module = convert_model(proto, source=str(path))
    check_parity(proto, module)


def _try_images(path: Path) -> None:
    from zerop_deploy.data.sources import load_pool, open_source

    load_pool(open_source(path), (3, 16, 16), limit=8)


def _one(rnd: random.Random, seeds, images, work: Path) -> tuple[str, Path]:
    if rnd.random() < 0.6:
        seed = rnd.choice(seeds)
        data = _mutate_graph(seed, rnd) if rnd.random() < 0.4 else _mutate_bytes(seed, rnd)
        p = work / "m.onnx"
        p.write_bytes(data)
        return "model", p
    suffix = rnd.choice(list(images))
    data = _mutate_bytes(images[suffix], rnd)
    if suffix in (".png", ".jpeg"):
        folder = work / "imgs"
        folder.mkdir(exist_ok=True)
        for f in folder.iterdir():
            f.unlink()
        (folder / f"a{suffix}").write_bytes(data)
        (folder / f"b{suffix}").write_bytes(images[suffix])
        return "images", folder
    p = work / f"x{suffix}"
    p.write_bytes(data)
    return "images", p


def _worker(seconds: float, seed: int, work: Path, conn) -> None:
    import warnings

    warnings.simplefilter("ignore")
    rnd = random.Random(seed)
    seeds, images = _model_seeds(), _image_seeds()
    counts = {"model": 0, "images": 0, "clean_errors": 0, "crashes": []}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        kind, path = _one(rnd, seeds, images, work)
        (work / "current").write_text(json.dumps([kind, str(path)]))
        counts[kind] += 1
        try:
            _try_model(path) if kind == "model" else _try_images(path)
        except ZeropError:
            counts["clean_errors"] += 1
        except Exception as e:  # noqa: BLE001 - a crash is what we are looking for
            counts["crashes"].append(f"{kind}: {type(e).__name__}: {e}"[:300])
            keep = Path(tempfile.gettempdir()) / f"zerop-fuzz-crash-{seed}-{len(counts['crashes'])}"
            os.system(f"cp -r '{path}' '{keep}'")  # noqa: S605
            traceback.print_exc()
    conn.send(counts)


def main() -> None:
    import multiprocessing as mp

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--slice", type=float, default=60, help="seconds per forked worker")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    total = {"model": 0, "images": 0, "clean_errors": 0, "crashes": [], "hard_crashes": 0}
    end = time.monotonic() + args.minutes * 60
    with tempfile.TemporaryDirectory() as tmp:
        i = 0
        while time.monotonic() < end:
            work = Path(tmp) / f"w{i}"
            work.mkdir()
            parent, child = mp.Pipe()
            secs = min(args.slice, end - time.monotonic())
            proc = mp.get_context("fork").Process(target=_worker, args=(secs, i, work, child))
            proc.start()
            proc.join(secs + 300)
            if parent.poll():
                got = parent.recv()
                for k in ("model", "images", "clean_errors"):
                    total[k] += got[k]
                total["crashes"] += got["crashes"]
            else:  # the worker died (signal, hang): count the input it was on
                proc.kill()
                total["hard_crashes"] += 1
                current = work / "current"
                what = current.read_text() if current.exists() else "before the first input"
                total["crashes"].append(f"hard: {what}")
            i += 1
    total["minutes"] = args.minutes
    total["inputs"] = total["model"] + total["images"]
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(total, indent=2) + "\n")
    text = (
        f"`python benchmarks/fuzz.py --minutes {args.minutes:g}`: {total['inputs']} inputs "
        f"({total['model']} mutated models through read + convert + parity, {total['images']} "
        f"mutated image sources through open + load), {total['clean_errors']} clean exit-2 "
        f"errors, **{len(total['crashes'])} crashes** ({total['hard_crashes']} hard). "
        "Details: `benchmarks/results/fuzz.json`."
    )
    print(text)
    if args.write:
        write_section("fuzz", "Fuzzing the loaders", text)


if __name__ == "__main__":
    main()
