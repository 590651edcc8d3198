"""The root command and the console script's entry (:func:`run_app`): registers the commands on the shared
:data:`~.common.app` (commands import only :mod:`.common`, so imports run one way)."""

from __future__ import annotations

import os
import sys

import typer

from .. import __version__
from ..errors import ExitCode
from .common import UI, app, ui  # noqa: F401  (UI and app are this package's public names)


@app.callback(invoke_without_command=True)
def root(ctx: typer.Context,
         quiet: bool = typer.Option(False, "--quiet", "-q", help="Only errors on stderr; no tables or progress."),
         no_color: bool = typer.Option(False, "--no-color", help="No colors (also: NO_COLOR or CI set)."),
         version: bool = typer.Option(False, "--version", help="Show the version and exit.", is_eager=True)) -> None:
    if version:
        typer.echo(f"quantcli {__version__}")
        raise typer.Exit(0)
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(0)
    ui.configure(quiet, no_color)


def _register() -> None:
    from . import analyze, calibrate, compare, convert, inspect, run  # noqa: F401  (commands register themselves)


_register()


def _click_exception() -> type:
    """The ClickException class Typer raises: its vendored click's where it has one (recent Typer), else click's.
    The vendored one first: a separately installed click (e.g. pulled in by huggingface_hub with
    ``quantcli[text]``) is not what Typer raises, and usage errors would end as tracebacks."""
    try:
        from typer._click.exceptions import ClickException
    except ImportError:  # older Typer uses click itself
        from click.exceptions import ClickException
    return ClickException


def run_app() -> None:
    """The console script's entry: command-line usage errors are one line too (exit 2), like every other error."""
    click_exception = _click_exception()
    try:
        code = app(standalone_mode=False, prog_name="quantcli")
    except KeyboardInterrupt:  # outside a command
        sys.stderr.write("quantcli: interrupted\n")
        sys.exit(int(ExitCode.INTERRUPTED))
    except click_exception as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # a group without its command: the help is the answer
            exc.show()
            sys.exit(exc.exit_code)
        ctx = getattr(exc, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        message = " ".join(exc.format_message().split())
        sys.stderr.write(f"quantcli: error: {message}{hint}\n")
        code = exc.exit_code
    except SystemExit as exc:
        code = exc.code
    # an interrupt while Typer parses the command line ends as a silent exit 130: say what happened
    if code == int(ExitCode.INTERRUPTED) and not ui.interrupt_reported:
        sys.stderr.write("quantcli: interrupted\n")
    _flush_stdout()
    sys.exit(code if isinstance(code, int) else 0)


def _flush_stdout() -> None:
    """Tables buffered for stdout are written here at the latest: a full device or a closed pipe is the
    environment's problem, said in one line (exit 2), not an 'Exception ignored' at interpreter exit."""
    from ..paths import os_error

    try:
        sys.stdout.flush()
    except OSError as exc:
        try:  # nothing more can go to this stdout: point it at /dev/null so the interpreter's exit flush is quiet
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except OSError:
            pass
        sys.stderr.write(f"quantcli: error: {os_error('stdout', exc)}\n")
        sys.exit(int(ExitCode.USAGE))
