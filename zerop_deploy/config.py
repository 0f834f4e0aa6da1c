"""Frozen, keyword-only configuration objects, checked on construction and serialisable to JSON.

A bad value raises :class:`~zerop_deploy.errors.ConfigError` naming the option, never an ``assert``.
The config that produced a model is written into its report.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from zerop_deploy.data.preprocess import Preprocess
from zerop_deploy.errors import ConfigError

_BITS = (4, 8)


def _check_bits(name: str, value: int) -> None:
    if value not in _BITS:
        raise ConfigError(f"{name}={value}: supported bit widths are 4 and 8")


TARGETS = ("qdq", "ort-cpu")
"""Deployment targets, in the order ``--target`` lists them."""

DEFAULT_TARGET = "ort-cpu"
"""The target of ``quantize`` when none is given (see README, "Deployment targets"): measured
1.4-1.9x fp32's speed in onnxruntime at batch 1 and 0.95-2.1x at batch 64, against 0.24-0.39x
for the exact 4-bit file."""


@dataclass(frozen=True, kw_only=True)
class LayerOverride:
    """Per-layer bit widths (``None`` keeps the global value); ``skip`` keeps the layer in float."""

    wbits: int | None = None
    abits: int | None = None
    skip: bool = False

    def __post_init__(self) -> None:
        for name in ("wbits", "abits"):
            value = getattr(self, name)
            if value is not None:
                _check_bits(name, value)


@dataclass(frozen=True, kw_only=True)
class QuantConfig:
    """What to quantize and how wide.

    Attributes:
        wbits: Weight bits of ordinary layers.
        abits: Activation bits of ordinary layers.
        first_last_bits: Weight and activation bits of the first and last quantized layer.
        overrides: Per-layer overrides keyed by ONNX node name (they win over everything else).
        fold_bn: Fold BatchNormalization into the preceding Conv before fine-tuning.
        asymmetric_activations: Give signed activations (inputs not proven non-negative) a zero
            point chosen by calibration, instead of a range symmetric around 0.
        equalize: Cross-layer equalization of the activations between a Conv and the Conv it
            alone feeds (:mod:`zerop_deploy.quant.equalize`).
        bias_correction: After calibration, shift every quantized layer's bias so that its
            per-channel mean output is the fp32 model's on the calibration images
            (:mod:`zerop_deploy.quant.bias_correction`).
    """

    wbits: int = 4
    abits: int = 4
    first_last_bits: int = 8
    overrides: dict[str, LayerOverride] = field(default_factory=dict)
    fold_bn: bool = True
    asymmetric_activations: bool = False
    equalize: bool = False
    bias_correction: bool = False

    def __post_init__(self) -> None:
        _check_bits("wbits", self.wbits)
        _check_bits("abits", self.abits)
        _check_bits("first_last_bits", self.first_last_bits)
        for node, o in self.overrides.items():
            if not isinstance(o, LayerOverride):
                raise ConfigError(f"override for layer '{node}' must be a LayerOverride")

    def bits_for(self, node: str, *, edge: bool) -> tuple[int, int] | None:
        """``(wbits, abits)`` of a layer, or None when it stays in float."""
        w, a = (self.first_last_bits,) * 2 if edge else (self.wbits, self.abits)
        o = self.overrides.get(node)
        if o is not None:
            if o.skip:
                return None
            w, a = o.wbits or w, o.abits or a
        return w, a

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def load_overrides(path: str | Path) -> dict[str, LayerOverride]:
    """Read per-layer overrides from a JSON file: ``{"layers": {"node": {"wbits": 8, ...}}}``.

    Raises:
        ConfigError: Missing file, bad JSON or an unknown key (a misspelt key is never ignored).
    """
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except OSError as e:
        raise ConfigError(f"{p}: cannot read the layer config ({e.strerror})") from e
    except json.JSONDecodeError as e:
        raise ConfigError(f"{p}: not valid JSON ({e.msg} at line {e.lineno})") from e
    if (
        not isinstance(doc, dict)
        or set(doc) - {"layers"}
        or not isinstance(doc.get("layers"), dict)
    ):
        raise ConfigError(f'{p}: expected {{"layers": {{NODE: {{"wbits", "abits", "skip"}}}}}}')
    out = {}
    for node, spec in doc["layers"].items():
        unknown = set(spec) - {"wbits", "abits", "skip"} if isinstance(spec, dict) else {"?"}
        if unknown:
            raise ConfigError(
                f"{p}: layer '{node}': unknown keys {sorted(unknown)}; use wbits, abits, skip"
            )
        out[node] = LayerOverride(**spec)
    return out


def _check_seed(seed: int) -> None:
    if not 0 <= seed < 2**63:
        raise ConfigError(f"--seed {seed}: must be between 0 and 2**63 - 1")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """How to fine-tune the quantized student.

    Attributes:
        steps: Number of optimisation steps (ignored when ``time_budget_s`` is set and reached
            first).
        time_budget_s: Wall-clock budget of fine-tuning in seconds, or None.
        batch_size: Images per step.
        lr: Learning rate of 4-bit layers' weights (8-bit layers use ``lr / 16``); step sizes
            learn relative to their own size (:func:`zerop_deploy.quant.loop.param_groups`).
        scale_lr_factor: Ratio of the step-size learning rate to the weight learning rate.
        temperature: Distillation temperature of the KL loss on logits.
        calib_images: Images used to initialise the step sizes.
        seed: Seed of data order, augmentation and initialisation.
        device: "auto", "cpu" or "cuda".
        checkpoint_every_s: Seconds between checkpoints.
        augment: Random crops and flips of the training images.
        feature_weight: Weight of the feature-matching term (normalised MSE between the outputs
            of every quantized layer and the teacher's, after BatchNorm); 0 disables it.
    """

    steps: int = 500
    time_budget_s: float | None = None
    batch_size: int = 64
    lr: float = 1e-4
    scale_lr_factor: float = 1.0
    temperature: float = 1.0
    calib_images: int = 256
    seed: int = 0
    device: str = "auto"
    checkpoint_every_s: float = 120.0
    augment: bool = True
    feature_weight: float = 1.0

    def __post_init__(self) -> None:
        if not self.feature_weight >= 0:  # NaN too
            raise ConfigError(f"--feature-weight {self.feature_weight}: must be >= 0")
        _check_seed(self.seed)
        if not 1 <= self.steps <= 10_000_000:
            raise ConfigError(f"--steps {self.steps}: must be between 1 and 10,000,000")
        if self.time_budget_s is not None and not 0 < self.time_budget_s <= 30 * 86400:
            raise ConfigError(
                f"--time-budget {self.time_budget_s / 60:g}: must be > 0 and <= 30 days"
            )
        if not 1 <= self.batch_size <= 65536:
            raise ConfigError(f"--batch-size {self.batch_size}: must be between 1 and 65536")
        if not 0 < self.lr < 1:
            raise ConfigError(f"--lr {self.lr}: must be in (0, 1)")
        if not self.temperature > 0:
            raise ConfigError(f"temperature {self.temperature}: must be positive")
        if self.calib_images < 1:
            raise ConfigError(f"calibration images {self.calib_images}: must be >= 1")
        if self.checkpoint_every_s < 0:
            raise ConfigError(f"--checkpoint-every {self.checkpoint_every_s / 60:g}: must be >= 0")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"--device {self.device}: use auto, cpu or cuda")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Where the fine-tuning and evaluation images come from, and how they are preprocessed.

    Attributes:
        proxy: Proxy image sources (folders, .npz, .npy; their images are pooled), or one of the
            words ``"builtin"`` (public photos that ship with scikit-image and scikit-learn, cut
            into random crops: the default), ``"auto"`` (the candidate of ``candidates`` with the
            smallest BNS distance, see :mod:`zerop_deploy.proxy.stats`) or ``"none"`` (no proxy
            data). A single string is accepted for one source.
        candidates: Candidate sources ranked by ``proxy="auto"``.
        samples: Images per candidate used to rank candidates.
        builtin_images: Size of the built-in pool.
        proxy_images: Use at most this many proxy images (drawn at random, deterministic for the
            seed), or all of them (None).
        max_pool_bytes: Proxy images (uint8 at the model's input size) up to this many bytes
            are read once and held; bigger sets are streamed from their sources at every step,
            so memory stays flat (the report says ``"streamed": true``).
        synthetic: Number of synthetic images (BNS-matched,
            :mod:`zerop_deploy.synth.synthesize`) made and mixed into fine-tuning, 0 for none;
            or the path of a set ``zerop-deploy synth`` made before (reused as it is).
        sd_ratio: Fraction of every fine-tuning batch drawn from the synthetic images (ZeroP
            uses 0.5); 1 when there is no proxy data.
        eval: Labelled images for the accuracy of fp32 and quantized models, or None.
        holdout: Fraction of the proxy images kept out of training for validation (at most 1,000).
        preprocess: How images become model inputs (resize, center crop, interpolation,
            ``--mean``/``--std``), for every image input.
    """

    proxy: tuple[str, ...] = ("builtin",)
    candidates: tuple[str, ...] = ()
    samples: int = 1024
    builtin_images: int = 4096
    proxy_images: int | None = None
    max_pool_bytes: int = 256 << 20
    synthetic: int | str = 0
    sd_ratio: float = 0.5
    eval: str | None = None
    holdout: float = 0.1
    preprocess: Preprocess = field(default_factory=Preprocess)

    def __post_init__(self) -> None:
        if isinstance(self.proxy, str):
            object.__setattr__(self, "proxy", (self.proxy,))
        object.__setattr__(self, "proxy", tuple(str(p) for p in self.proxy))
        object.__setattr__(self, "candidates", tuple(str(p) for p in self.candidates))
        words = {"auto", "none"} & set(self.proxy)
        if not self.proxy:
            raise ConfigError("--proxy: give auto, builtin, none or at least one PATH")
        if words and len(self.proxy) > 1:
            raise ConfigError(f"--proxy {' '.join(self.proxy)}: {words.pop()} stands alone")
        if self.proxy == ("auto",) and not self.candidates:
            raise ConfigError("--proxy auto: give the sets to choose from with --candidates PATH")
        if self.candidates and self.proxy != ("auto",):
            raise ConfigError("--candidates: only used with --proxy auto")
        if isinstance(self.synthetic, str) and self.synthetic.lstrip("-").isdigit():
            object.__setattr__(self, "synthetic", int(self.synthetic))
        if self.proxy == ("none",) and self.synthetic == 0:
            raise ConfigError(
                "--proxy none: no images to fine-tune on; add --synthetic N (synthetic-only) "
                "or give proxy data"
            )
        if isinstance(self.synthetic, int) and not 0 <= self.synthetic <= 10_000_000:
            raise ConfigError(f"--synthetic {self.synthetic}: must be between 0 and 10,000,000")
        if not 0 <= self.sd_ratio <= 1:
            raise ConfigError(f"--sd-ratio {self.sd_ratio}: must be in [0, 1]")
        if self.samples < 1:
            raise ConfigError(f"--samples {self.samples}: must be >= 1")
        if not 1 <= self.builtin_images <= 1_000_000:
            raise ConfigError(f"built-in pool size {self.builtin_images}: must be 1..1,000,000")
        if self.proxy_images is not None and self.proxy_images < 1:
            raise ConfigError(f"--proxy-images {self.proxy_images}: must be >= 1")
        if self.max_pool_bytes < 1:
            raise ConfigError(f"max pool bytes {self.max_pool_bytes}: must be positive")
        if not 0 <= self.holdout < 1:
            raise ConfigError(f"holdout {self.holdout}: must be in [0, 1)")

    def input_paths(self) -> list[Path]:
        """The user's files and folders this configuration reads (no output may land on them)."""
        named = [p for p in self.proxy if p not in ("builtin", "auto", "none")]
        named += [*self.candidates, self.eval, self.synthetic]
        return [Path(p) for p in named if isinstance(p, str)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True, kw_only=True)
class SynthConfig:
    """How synthetic images are made.

    Attributes:
        images: How many.
        iterations: Adam steps per batch.
        batch_size: Images optimised together (the BN statistics are matched per batch).
        lr: Adam learning rate on the pixels (in [0, 1] units).
        ce_weight: Weight of the teacher's cross-entropy towards the target class.
        tv_weight: Weight of the total-variation prior.
        l2_weight: Weight of the L2 prior (distance to mid-gray).
        seed: Seed of the initial pixels, targets, jitter and flips.
    """

    images: int = 1024
    iterations: int = 100
    batch_size: int = 256
    lr: float = 0.1
    ce_weight: float = 0.05
    tv_weight: float = 0.5
    l2_weight: float = 0.001
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.images <= 10_000_000:
            raise ConfigError(f"-n {self.images}: must be between 1 and 10,000,000")
        if not 1 <= self.iterations <= 100_000:
            raise ConfigError(f"--iterations {self.iterations}: must be between 1 and 100,000")
        if not 1 <= self.batch_size <= 65536:
            raise ConfigError(f"--batch-size {self.batch_size}: must be between 1 and 65536")
        if not 0 < self.lr < 10:
            raise ConfigError(f"synthesis learning rate {self.lr}: must be in (0, 10)")
        if not min(self.ce_weight, self.tv_weight, self.l2_weight) >= 0:
            raise ConfigError("synthesis loss weights must be >= 0")
        _check_seed(self.seed)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Where a quantize run writes, and how it behaves around the work itself.

    Attributes:
        output: The model to write; None for ``MODEL.int4.onnx`` and its siblings
            (:func:`zerop_deploy.api.default_output`).
        report: The report to write; None for ``OUTPUT.report.json`` beside the output.
        plot_layers: Also write a bar chart of every layer's output SQNR against fp32 here.
        resume: Continue from the checkpoint a killed run left next to the output.
        min_agreement: The quality gate: fail with exit 1 when the fp32-vs-quantized top-1
            agreement is below this fraction (the outputs are still written).
        progress: Progress bars and lines on stderr (only on a terminal).
        target: Deployment target of the written file (:data:`TARGETS`), or None for
            :data:`DEFAULT_TARGET`, falling back to ``qdq`` for a model the preflight cannot
            write for it.
    """

    output: str | Path | None = None
    report: str | Path | None = None
    plot_layers: str | Path | None = None
    resume: bool = False
    min_agreement: float | None = None
    progress: bool = True
    target: str | None = None

    def __post_init__(self) -> None:
        if self.min_agreement is not None and not 0 <= self.min_agreement <= 1:
            raise ConfigError(f"--min-agreement {self.min_agreement}: must be a fraction in [0, 1]")
        if self.target is not None and self.target not in TARGETS:
            raise ConfigError(f"--target {self.target!r}: choose one of {', '.join(TARGETS)}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}
