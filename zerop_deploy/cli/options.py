"""Helpers shared by the command modules: one-line errors, JSON output, option parsing."""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

import click

from zerop_deploy.config import DEFAULT_TARGET, TARGETS
from zerop_deploy.data.preprocess import Preprocess

PROG = "zerop-deploy"


def fail(message: str, code: int) -> None:
    """Print ``message`` as one ``zerop-deploy: error:`` line on stderr and exit with ``code``."""
    click.echo(f"{PROG}: error: {' '.join(message.split())}", err=True)
    sys.exit(code)


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``docker stop``, a batch scheduler's preemption) as an interrupt.

    Being a KeyboardInterrupt, it takes the same path as Ctrl-C: the checkpoint is written and the
    command stops with one line; the exit code is 143 instead of 130.
    """


def interrupted_code(e: BaseException) -> int:
    """Exit code of an interrupt: 143 for SIGTERM, 130 for SIGINT."""
    return 143 if isinstance(e, Terminated) else 130


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Turn SIGTERM into :class:`Terminated` while the block runs (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(_signum: int, _frame: Any) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def print_json(doc: Any) -> None:
    """Print ``doc`` as the one JSON document on stdout."""
    click.echo(json.dumps(doc, indent=2, sort_keys=False))


def floats(value: str | None, option: str) -> tuple[float, ...] | None:
    """Parse ``"0.5,0.4"`` into floats; ConfigError naming ``option`` when it is not numbers."""
    if value is None:
        return None
    try:
        return tuple(float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(
            f"expected comma-separated numbers, got '{value}'", param_hint=option
        ) from None


class Variadic(click.Option):
    """A repeatable option that also takes the arguments after it up to the next option.

    ``--candidates a.npz b/ c.npy`` works as well as ``--candidates a.npz --candidates b/``, so a
    shell glob can follow the option (DESIGN.md writes ``--proxy PATH ...``).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, multiple=True, **kwargs)

    def add_to_parser(self, parser: Any, ctx: click.Context) -> None:  # noqa: D102
        super().add_to_parser(parser, ctx)
        opt = getattr(parser, "_long_opt", {}).get(self.opts[0])
        if opt is None:  # click internals changed: the repeated form still works
            return
        single = opt.process

        def process(value: Any, state: Any) -> None:
            single(value, state)
            while state.rargs and not state.rargs[0].startswith("-"):
                single(state.rargs.pop(0), state)

        opt.process = process


# options shared by several commands, declared once so they read the same everywhere
json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON document on stdout."
)
seed_option = click.option("--seed", type=int, default=0, show_default=True)
mean_option = click.option(
    "--mean", type=str, default=None, help="Per-channel mean to subtract, e.g. 0.485,0.456,0.406."
)
std_option = click.option("--std", type=str, default=None, help="Per-channel std to divide by.")


def preprocess_options(command: Any) -> Any:
    """``--resize N --crop N | --crop-ratio R`` and ``--interpolation`` (image geometry)."""
    for option in reversed((
        click.option("--resize", type=int, default=None,
                     help="Shorter side before the center crop, e.g. 256 (with --crop 224)."),
        click.option("--crop", type=int, default=None, help="The center crop --resize refers to."),
        click.option("--crop-ratio", type=float, default=None,
                     help="Crop / resized shorter side, e.g. 0.875 (default: 0.875 for inputs of "
                          "128 px and more, else 1)."),
        click.option("--interpolation", type=click.Choice(["bilinear", "bicubic"]), default=None,
                     help="Resize interpolation (default: bicubic from 128 px, else bilinear)."),
    )):  # fmt: skip
        command = option(command)
    return command


def make_preprocess(
    resize: int | None,
    crop: int | None,
    crop_ratio: float | None,
    interpolation: str | None,
    mean: str | None = None,
    std: str | None = None,
) -> Any:
    """The :class:`~zerop_deploy.data.preprocess.Preprocess` of the options (ConfigError if bad)."""
    return Preprocess(
        resize=resize, crop=crop, crop_ratio=crop_ratio, interpolation=interpolation,
        mean=floats(mean, "--mean"), std=floats(std, "--std"),
    )  # fmt: skip


target_option = click.option(
    "--target",
    type=click.Choice(list(TARGETS)),
    default=None,
    help=f"ort-cpu: runs on onnxruntime's integer CPU kernels, faster than fp32 (weights exact, "
    f"activations on 8-bit grids); qdq: the exact student with int4 initializers (compact, "
    f"portable). Default: {DEFAULT_TARGET}, or qdq where the preflight cannot write that.",
)
device_option = click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True
)
