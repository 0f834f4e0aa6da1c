"""The ``zerop-deploy`` command group: its exit codes, and the commands of this package.

Exit codes (DESIGN.md): 0 success; 1 a quality gate failed; 2 bad input or usage, reported as one
line on stderr without a traceback; 70 an unexpected exception (a bug), also one line. ``--json``
prints one JSON document on stdout and nothing else there.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Any

import click

from zerop_deploy import __version__
from zerop_deploy.cli.commands import bench_cmd, demo_cmd, inspect_cmd, retarget_cmd, validate_cmd
from zerop_deploy.cli.data import select_proxy_cmd, synth_cmd
from zerop_deploy.cli.options import PROG, fail, interrupted_code, sigterm_interrupts
from zerop_deploy.cli.quantize import quantize_cmd
from zerop_deploy.errors import ZeropError

INTERNAL_ERROR = 70
"""Exit code of an unexpected exception (a bug; sysexits' EX_SOFTWARE), so that 1 stays the
quality gates' and 2 bad input's."""


class _Cli(click.Group):
    """A click group that turns every expected error into one line on stderr and an exit code."""

    def main(self, *args: Any, **kwargs: Any) -> Any:  # noqa: D102 - see class docstring
        kwargs["standalone_mode"] = False
        try:
            with sigterm_interrupts():
                rv = super().main(*args, **kwargs)
        except ZeropError as e:
            fail(str(e), e.exit_code)
        except click.UsageError as e:
            where = f"{e.ctx.command_path}: " if e.ctx is not None else ""
            fail(f"{where}{e.format_message()} (see --help)", 2)
        except click.ClickException as e:  # exit 1 is the quality gates' alone
            fail(e.format_message(), 2 if e.exit_code == 1 else e.exit_code)
        except click.exceptions.Abort:
            fail("interrupted", 130)
        except KeyboardInterrupt as e:
            fail("interrupted", interrupted_code(e))
        except Exception as e:  # noqa: BLE001 - a bug: one line and its own exit code, never 1
            if os.environ.get("ZEROP_DEPLOY_DEBUG"):
                traceback.print_exc()
            fail(
                f"internal error ({type(e).__name__}: {e}); this is a bug in {PROG}, please "
                "report it with the command line (ZEROP_DEPLOY_DEBUG=1 prints the traceback)",
                INTERNAL_ERROR,
            )
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name=PROG)
def main() -> None:
    """Turn a trained ONNX CNN into a low-bit QDQ ONNX model without its training data."""


main.add_command(inspect_cmd)
main.add_command(demo_cmd)
main.add_command(quantize_cmd)
main.add_command(validate_cmd)
main.add_command(select_proxy_cmd)
main.add_command(synth_cmd)
main.add_command(retarget_cmd)
main.add_command(bench_cmd)

if __name__ == "__main__":  # pragma: no cover
    main()
