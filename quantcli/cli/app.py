"""The root command, consoles, progress bars and the one error boundary (exit codes).

Exit codes: 0 success; 1 a check failed (e.g. ``--max-drop``); 2 bad input or usage; 3 internal error
(a bug, or a produced model that failed validation); 130 interrupted.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Callable

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .. import __version__
from ..errors import ExitCode, InternalError, QuantcliError

app = typer.Typer(add_completion=False, rich_markup_mode=None,
                  help="Quantize FP32 ONNX models to INT8 / FP16 / BF16 for ONNX Runtime on CPU.\n\n"
                       "Typical run: calibrate -> convert -> compare accuracy.")


def _plain_env() -> bool:
    """No styling and no progress bars: NO_COLOR or CI set (any non-empty value)."""
    return bool(os.environ.get("NO_COLOR")) or bool(os.environ.get("CI"))


class UI:
    """Consoles: data (tables) to stdout, messages and progress to stderr.  With --no-color, NO_COLOR or CI
    nothing is styled on either stream (no colors, no bold); with a report on stdout (``--json -``) the tables
    go to stderr so stdout holds the report alone.  --quiet keeps errors, warnings and a failed gate's FAIL line."""

    def __init__(self) -> None:
        self.quiet = False
        self.no_color = False
        self.out = Console()
        self.err = Console(stderr=True)

    def configure(self, quiet: bool, no_color: bool) -> None:
        self.quiet = quiet
        self.no_color = no_color
        plain = no_color or _plain_env()
        style = {"color_system": None, "no_color": True} if plain else {}
        self.out = Console(highlight=not plain, quiet=quiet, **style)
        self.err = Console(stderr=True, highlight=False, **style)

    def reserve_stdout(self) -> None:
        """A report goes to stdout: everything else (tables too) goes to stderr."""
        self.out = Console(stderr=True, highlight=False, quiet=self.quiet,
                           **({"color_system": None, "no_color": True} if self.no_color or _plain_env() else {}))

    def warn(self, message: str) -> None:
        self.err.print(f"quantcli: warning: {message}", highlight=False, markup=False, soft_wrap=True)

    def failed(self, line: str) -> None:
        """A failed gate's FAIL line: printed with the tables, and on stderr under --quiet."""
        if self.quiet:
            self.err.print(line, highlight=False, markup=False, soft_wrap=True)

    def apply(self, quiet: bool, no_color: bool) -> None:
        """Command-level --quiet / --no-color (the same flags are accepted before the command too)."""
        if quiet or no_color:
            self.configure(self.quiet or quiet, self.no_color or no_color)

    def progress(self, desc: str, total: int) -> Callable[[int], None]:
        if self.quiet or not self.err.is_terminal or _plain_env():
            return lambda n: None
        bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                       console=self.err, transient=True)
        task = bar.add_task(desc, total=total)
        bar.start()
        done = [0]

        def advance(n: int) -> None:
            done[0] += n
            bar.update(task, advance=n)
            if done[0] >= total:
                bar.stop()
        return advance


ui = UI()


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


@contextmanager
def error_boundary():
    """Turn every failure into one line on stderr and a documented exit code."""
    try:
        yield
    except QuantcliError as exc:
        ui.err.print(f"quantcli: error: {exc}", highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(int(exc.exit_code))
    except InternalError as exc:
        ui.err.print(f"quantcli: internal error: {exc}", highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(int(ExitCode.INTERNAL))
    except KeyboardInterrupt:
        global _interrupt_reported
        _interrupt_reported = True
        ui.err.print("quantcli: interrupted; the output being written was removed (outputs already "
                     "complete were kept)", highlight=False)
        raise typer.Exit(int(ExitCode.INTERRUPTED))
    except (typer.Exit, typer.Abort, SystemExit):
        raise
    except OSError as exc:  # the environment: a full disk, stdout on a full device, a closed pipe...
        from ..paths import os_error

        ui.err.print(f"quantcli: error: {os_error(exc.filename or 'stdout', exc)}", highlight=False, markup=False,
                     soft_wrap=True)
        raise typer.Exit(int(ExitCode.USAGE))
    except Exception as exc:  # a bug: say so, keep the traceback available
        if os.environ.get("QUANTCLI_DEBUG"):
            raise
        ui.err.print(f"quantcli: internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
                     "(set QUANTCLI_DEBUG=1 for the traceback, and please report it)", highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(int(ExitCode.INTERNAL))


def check_io(inputs, outputs) -> None:
    """Every input and output of the command, checked once before any work (:func:`quantcli.paths.check_io`);
    a report going to stdout (``-``) moves everything else off stdout."""
    from ..paths import check_io as check, is_stdout

    check(inputs, outputs)
    if any(is_stdout(p) for _, p in outputs):
        ui.reserve_stdout()


def write_reports(result, *, json_path=None, junit_path=None, markdown_path=None) -> None:
    """Write the optional machine-readable reports of a result, each atomically."""
    from ..paths import write_text_atomic
    from ..report.render import to_json

    if json_path:
        write_text_atomic(json_path, to_json(result))
    if junit_path or markdown_path:
        from ..report.ci import to_junit, to_markdown

        if junit_path:
            write_text_atomic(junit_path, to_junit(result))
        if markdown_path:
            write_text_atomic(markdown_path, to_markdown(result))


def _register() -> None:
    from . import analyze, calibrate, compare, convert, inspect, run  # noqa: F401  (commands register themselves)


_register()


_interrupt_reported = False


def _click_exception() -> type:
    try:
        from click.exceptions import ClickException
    except ImportError:  # recent Typer vendors click
        from typer._click.exceptions import ClickException
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
    if code == int(ExitCode.INTERRUPTED) and not _interrupt_reported:
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
