"""The command line: click options and commands over :mod:`zerop_deploy.api`, and exit codes."""

from zerop_deploy.cli.main import main

__all__ = ["main"]
