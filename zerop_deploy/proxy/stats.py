"""BatchNorm statistics (BNS) and proxy-data ranking.

Every BatchNormalization node remembers the per-channel mean and variance of its input on the
training data. A candidate image set that makes the network produce similar statistics "looks
like" the training data to the network (ZeroQ, ZeroP). This module

* reads the stored statistics of every BatchNormalization node of the ONNX graph (by node name,
  from its constant inputs, so BNs that onnx2torch turns into its own modules count too);
* observes the statistics that images produce at each BN input, through forward pre-hooks on the
  teacher's module of that node (hooked by node, not by class);
* scores a candidate set by its BNS distance, and ranks candidates;
* for models whose BN was folded into the convolutions (no BNS left), scores a candidate from the
  teacher's outputs alone (``method: "output"``).

BNS distance (the default, ``normalised``): for BN layer ``l`` with ``C`` channels, stored mean
``m`` and std ``s = sqrt(var + eps)``, observed mean ``mu`` and std ``sigma`` over N x H x W,

    d_l = sqrt(mean_c ((mu_c - m_c) / s_c)^2) + sqrt(mean_c ((sigma_c - s_c) / s_c)^2)
    D   = mean_l d_l

This is ZeroQ's ``||mu - m||_2 + ||sigma - s||_2`` per layer, with each channel measured in units
of its own stored std and an RMS over channels instead of a sum. The plain ZeroQ sum
(``sum_l ||mu - m||_2 + ||sigma - s||_2``) is dominated by wide layers and by the layers whose
activations happen to be large; the normalised form weighs every layer equally and is
dimensionless. ``s_c`` is floored at 1 % of the layer's median std so that dead channels (stored
variance ~0) cannot blow the score up. BENCHMARKS.md compares how the two forms predict the
accuracy of the quantized model (Spearman's rho).

Output score (folded BN): with ``p`` the teacher's softmax, ``conf`` the mean of ``max p`` and
``even`` the entropy of the histogram of predicted classes divided by ``log(classes)``,
``score = (1 - conf) + (1 - even)``: real images of the training domain give confident
predictions spread over all classes; noise and far-off domains give hesitant or one-class ones.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from torch import nn

from zerop_deploy.data.batches import images_per_pass
from zerop_deploy.data.preprocess import NO_PREPROCESS, Preprocess
from zerop_deploy.data.sources import load_pool
from zerop_deploy.quant.graph import module_node_names, resolved_constants

_STD_FLOOR = 0.01  # fraction of the layer's median stored std


@dataclass(frozen=True)
class StoredBn:
    """The running statistics one BatchNormalization node stores."""

    node: str
    mean: np.ndarray  # float64 [C]
    std: np.ndarray  # float64 [C], sqrt(var + eps)


@dataclass(frozen=True)
class ObservedBn:
    """Per-channel mean and std of a BN node's input over a set of images."""

    node: str
    mean: np.ndarray
    std: np.ndarray


def floored_std(bn: StoredBn) -> np.ndarray:
    """The stored std, floored at 1 % of the layer's median (dead channels cannot blow up)."""
    return np.maximum(bn.std, _STD_FLOOR * float(np.median(bn.std)))


def module_device(module: nn.Module) -> torch.device:
    """Where ``module``'s parameters live (cpu for a module without parameters)."""
    return next((p.device for p in module.parameters()), torch.device("cpu"))


def first_output(y: object) -> torch.Tensor:
    """The first tensor of a model's output (which may be a tuple or list of outputs)."""
    while isinstance(y, (tuple, list)):
        y = y[0]
    assert isinstance(y, torch.Tensor)
    return y


def stored_bns(proto: onnx.ModelProto) -> list[StoredBn]:
    """The stored statistics of every BatchNormalization node with constant statistics, in order."""
    from onnx import numpy_helper

    consts = resolved_constants(proto)
    out = []
    for node in proto.graph.node:
        if node.op_type != "BatchNormalization" or len(node.input) < 5:
            continue
        if not all(name in consts for name in node.input[3:5]):
            continue
        mean, var = (numpy_helper.to_array(consts[n]).astype(np.float64) for n in node.input[3:5])
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        out.append(StoredBn(node.name, mean, np.sqrt(np.maximum(var, 0) + eps)))
    return out


class _Moments:
    """Running per-channel sums (float64) of a tensor's values and squares over all but dim 1."""

    def __init__(self) -> None:
        self.n = 0
        self.s: torch.Tensor | None = None
        self.s2: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().double().transpose(0, 1).reshape(x.shape[1], -1)
        s, s2 = x.sum(1), (x * x).sum(1)
        self.s = s if self.s is None else self.s + s
        self.s2 = s2 if self.s2 is None else self.s2 + s2
        self.n += x.shape[1]

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        assert self.s is not None and self.s2 is not None  # add() ran
        mean = (self.s / self.n).cpu().numpy()
        var = (self.s2 / self.n).cpu().numpy() - mean * mean
        return mean, np.sqrt(np.maximum(var, 0.0))


def bn_modules(teacher: nn.Module, proto: onnx.ModelProto) -> dict[str, nn.Module]:
    """BN node name -> the teacher's submodule that computes it (for nodes with stored stats)."""
    wanted = {bn.node for bn in stored_bns(proto)}
    found = {}
    for module_name, node in module_node_names(proto).items():
        if node in wanted:
            with contextlib.suppress(AttributeError):
                found[node] = teacher.get_submodule(module_name)
    return found


@contextlib.contextmanager
def bn_input_hooks(
    modules: dict[str, nn.Module], fn: Callable[[str, torch.Tensor], None]
) -> Iterator[None]:
    """Call ``fn(node, input)`` with the input of every BN module while the context is open."""
    handles = [
        m.register_forward_pre_hook(lambda _m, args, node=node: fn(node, args[0]))
        for node, m in modules.items()
    ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def observe_bns(
    teacher: nn.Module, proto: onnx.ModelProto, batches: Iterable[torch.Tensor]
) -> list[ObservedBn]:
    """Run ``batches`` (model-ready float tensors) through the teacher; the statistics per BN input.

    Only nodes whose module ran are returned (a BN in a branch the input never reaches is absent).
    """
    moments: dict[str, _Moments] = {}
    device = module_device(teacher)

    def record(node: str, x: torch.Tensor) -> None:
        moments.setdefault(node, _Moments()).add(x)

    with bn_input_hooks(bn_modules(teacher, proto), record), torch.no_grad():
        for x in batches:
            teacher(x.to(device))
    return [ObservedBn(node, *m.result()) for node, m in moments.items()]


def bns_distance(
    observed: list[ObservedBn], stored: list[StoredBn], *, normalised: bool = True
) -> float:
    """The BNS distance of observed statistics to the stored ones (see the module docstring).

    Args:
        observed: From :func:`observe_bns`.
        stored: From :func:`stored_bns`.
        normalised: The per-channel normalised mean over layers (default), or the plain ZeroQ sum.
    """
    ref = {bn.node: bn for bn in stored}
    terms = []
    for obs in observed:
        st = ref[obs.node]
        if normalised:
            s = floored_std(st)
            dm = math.sqrt(float(np.mean(((obs.mean - st.mean) / s) ** 2)))
            ds = math.sqrt(float(np.mean(((obs.std - st.std) / s) ** 2)))
        else:
            dm = float(np.linalg.norm(obs.mean - st.mean))
            ds = float(np.linalg.norm(obs.std - st.std))
        terms.append(dm + ds)
    if not terms:
        raise ValueError("no BatchNormalization statistics were observed")
    return float(np.mean(terms)) if normalised else float(np.sum(terms))


def output_score(logits: np.ndarray) -> dict[str, float]:
    """Score images by the teacher's outputs alone (for folded-BN models); lower is better.

    Returns:
        ``{"distance", "confidence", "evenness"}``: see the module docstring.
    """
    z = logits.reshape(len(logits), -1).astype(np.float64)
    z = z - z.max(1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(1, keepdims=True)
    confidence = float(p.max(1).mean())
    k = p.shape[1]
    hist = np.bincount(p.argmax(1), minlength=k) / len(p)
    nz = hist[hist > 0]
    evenness = float(-(nz * np.log(nz)).sum() / math.log(k)) if k > 1 else 1.0
    return {
        "distance": (1 - confidence) + (1 - evenness),
        "confidence": confidence,
        "evenness": evenness,
    }


def spearman(a: Iterable[float], b: Iterable[float]) -> float:
    """Spearman's rank correlation (average ranks for ties)."""
    x, y = _ranks(np.asarray(list(a), float)), _ranks(np.asarray(list(b), float))
    if len(x) != len(y) or len(x) < 2:
        raise ValueError("spearman needs two sequences of the same length >= 2")
    x, y = x - x.mean(), y - y.mean()
    den = math.sqrt(float((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / den) if den else float("nan")


def _ranks(v: np.ndarray) -> np.ndarray:
    order = np.argsort(v, kind="stable")
    r = np.empty(len(v))
    r[order] = np.arange(len(v), dtype=float)
    for value in np.unique(v):  # ties share their mean rank
        tie = v == value
        r[tie] = r[tie].mean()
    return r


def score_images(
    teacher: nn.Module, proto: onnx.ModelProto, batches: Iterable[torch.Tensor], method: str
) -> dict[str, float]:
    """Score one candidate set: ``{"distance", ...}`` by ``method`` "bns" or "output"."""
    if method == "bns":
        observed = observe_bns(teacher, proto, batches)
        stored = stored_bns(proto)
        return {
            "distance": bns_distance(observed, stored),
            "plain_distance": bns_distance(observed, stored, normalised=False),
        }
    device = module_device(teacher)
    with torch.no_grad():
        logits = [first_output(teacher(x.to(device))).float().cpu() for x in batches]
    return output_score(torch.cat(logits).numpy())


def scoring_method(proto: onnx.ModelProto) -> str:
    """Return "bns" when the graph keeps BatchNormalization statistics, else "output"."""
    return "bns" if stored_bns(proto) else "output"


def rank_candidates(
    teacher: nn.Module,
    proto: onnx.ModelProto,
    sources: list,
    chw: tuple[int, int, int],
    *,
    samples: int,
    seed: int = 0,
    preprocess: Preprocess = NO_PREPROCESS,
    batch: int = 128,
    on_done: Callable[[dict], None] | None = None,
) -> tuple[str, list[dict]]:
    """Score every candidate source on ``samples`` of its images; best (smallest distance) first.

    Args:
        teacher: The fp32 model (eval mode) on the device to use.
        proto: Its ONNX graph (for the stored statistics and node names).
        sources: Opened :class:`zerop_deploy.data.sources.ImageSource` objects.
        chw: The model's input (C, H, W).
        samples: Images drawn at random (deterministic for ``seed``) from each candidate.
        seed: Seed of the draw.
        preprocess: Turns images into model inputs (``--mean``/``--std`` for graphs that do not
            normalise their own input).
        batch: Images per forward pass at most (fewer at big inputs:
            :func:`zerop_deploy.data.batches.images_per_pass`).
        on_done: Called with each candidate's row as soon as it is scored (progress).

    Returns:
        ``(method, rows)``: method "bns" or "output" (no stored statistics), rows
        ``{"candidate", "distance", "images", "total_images", "skipped", ...}`` sorted.
    """
    method = scoring_method(proto)
    batch = images_per_pass(chw, batch)
    rows = []
    for src in sources:
        pool = load_pool(src, chw, limit=samples, seed=seed)
        x = pool.images
        batches = (preprocess.to_input(x[i : i + batch]) for i in range(0, len(x), batch))
        row = {
            "candidate": src.name,
            **score_images(teacher, proto, batches, method),
            "images": len(x),
            "total_images": src.count,
            "skipped": pool.skipped,
        }
        rows.append(row)
        if on_done is not None:
            on_done(row)
    rows.sort(key=lambda r: r["distance"])
    return method, rows
