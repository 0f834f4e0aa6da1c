"""The ``zerop-deploy`` command line: thin click wrappers over the package's functions.

Exit codes (DESIGN.md): 0 success; 1 a quality gate failed; 2 bad input or usage, reported as one line
on stderr without a traceback. ``--json`` prints one JSON document on stdout and nothing else there.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from zerop_deploy import __version__
from zerop_deploy.errors import ZeropError

PROG = "zerop-deploy"


def _fail(message: str, code: int) -> None:
    click.echo(f"{PROG}: error: {' '.join(message.split())}", err=True)
    sys.exit(code)


class _Cli(click.Group):
    """A click group that turns every expected error into one line on stderr and an exit code."""

    def main(self, *args: Any, **kwargs: Any) -> Any:  # noqa: D102 - see class docstring
        kwargs["standalone_mode"] = False
        try:
            rv = super().main(*args, **kwargs)
        except ZeropError as e:
            _fail(str(e), e.exit_code)
        except click.UsageError as e:
            where = f"{e.ctx.command_path}: " if e.ctx is not None else ""
            _fail(f"{where}{e.format_message()} (see --help)", 2)
        except click.ClickException as e:
            _fail(e.format_message(), e.exit_code)
        except click.exceptions.Abort:
            _fail("interrupted", 130)
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        sys.exit(rv if isinstance(rv, int) else 0)


def _print_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2, sort_keys=False))


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name=PROG)
def main() -> None:
    """Turn a trained ONNX CNN into a low-bit QDQ ONNX model without its training data."""


@main.command("inspect")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
def inspect_cmd(model: Path, as_json: bool) -> None:
    """Describe MODEL and check that it converts to PyTorch (exit 2 if it does not)."""
    from zerop_deploy.summary import format_summary, inspect_model

    doc = inspect_model(model)
    if as_json:
        _print_json(doc)
    else:
        click.echo(format_summary(doc))
    if not doc["conversion"]["ok"]:
        _fail(f"{doc['conversion']['error']}", 2)


@main.command("demo")
@click.option(
    "--out-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("zerop-demo"),
    show_default=True,
    help="Folder for the files the demo writes.",
)
def demo_cmd(out_dir: Path) -> None:
    """Build the embedded demo CNN, export it with and without BatchNorm, and inspect both."""
    from zerop_deploy.demo import write_demo_models
    from zerop_deploy.summary import format_summary, inspect_model

    paths = write_demo_models(out_dir)
    for p in paths:
        doc = inspect_model(p)
        click.echo(format_summary(doc))
        click.echo("")
        if not doc["conversion"]["ok"]:
            _fail(f"{p}: {doc['conversion']['error']}", 2)
    click.echo("wrote: " + ", ".join(str(p) for p in paths))


@main.command("bench")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--qdq", type=click.Path(path_type=Path), default=None,
              help="The exported QDQ model of MODEL, timed end to end beside it.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Threads for onnxruntime and the int4 kernels (default: all cores).")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True,
              help="Batch size for a dynamic batch dimension.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
def bench_cmd(model: Path, qdq: Path | None, threads: int | None, batch: int, as_json: bool) -> None:
    """Time MODEL in onnxruntime (fp32, QDQ, MatMulNBits) and on the native int4 kernels."""
    from zerop_deploy.bench import bench, format_bench

    doc = bench(model, threads=threads, qdq_path=qdq, batch=batch)
    if as_json:
        _print_json(doc)
    else:
        click.echo(format_bench(doc))


if __name__ == "__main__":  # pragma: no cover
    main()
