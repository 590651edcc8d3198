"""What every command shares: the Typer app object, consoles and progress bars (:data:`ui`), the one error
boundary (exit codes), the input/output path check and the machine-readable reports.

Commands import from here and register themselves on :data:`app`; :mod:`.app` imports the commands, so the
imports run one way (app -> commands -> common).

Exit codes: 0 success; 1 a check failed (e.g. ``--max-drop``); 2 bad input or usage; 3 internal error
(a bug, or a produced model that failed validation); 130 interrupted.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Callable

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

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
        self.interrupt_reported = False  # an interrupt inside a command already said so
        self.out = Console(emoji=False)  # ":boom:" in a user's path or function name stays text
        self.err = Console(stderr=True, emoji=False)

    def configure(self, quiet: bool, no_color: bool) -> None:
        self.quiet = quiet
        self.no_color = no_color
        plain = no_color or _plain_env()
        style = {"color_system": None, "no_color": True} if plain else {}
        self.out = Console(highlight=not plain, quiet=quiet, emoji=False, **style)
        self.err = Console(stderr=True, highlight=False, emoji=False, **style)

    def reserve_stdout(self) -> None:
        """A report goes to stdout: everything else (tables too) goes to stderr."""
        self.out = Console(stderr=True, highlight=False, quiet=self.quiet, emoji=False,
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
        ui.interrupt_reported = True
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


def data_settings(recipe, preset: str | None, *data_paths):
    """The recipe's [data] with ``--data-preset``; the flag on data that is only .npz/.npy (already model inputs)
    means nothing, and is an error like every option that means nothing."""
    from pathlib import Path

    from ..data.sources import source_kind
    from ..recipe import recipe_data

    given = [str(p) for p in data_paths if p]
    if preset is not None and given and all(source_kind(Path(p)) == "npz" for p in given):
        raise QuantcliError(f"--data-preset {preset}: {', '.join(given)} is .npz/.npy data, already model inputs "
                            "(a preset says how image, text or audio files become inputs); remove it")
    return recipe_data(recipe, preset)


def write_reports(result, *, json_path=None, junit_path=None, markdown_path=None, html_path=None) -> None:
    """Write the optional reports of a result (JSON, JUnit, Markdown, HTML), each atomically."""
    from ..paths import write_text_atomic
    from ..report.render import to_json

    if json_path:
        write_text_atomic(json_path, to_json(result))
    if html_path:
        from ..report.html import to_html

        write_text_atomic(html_path, to_html(result))
    if junit_path or markdown_path:
        from ..report.ci import to_junit, to_markdown

        if junit_path:
            write_text_atomic(junit_path, to_junit(result))
        if markdown_path:
            write_text_atomic(markdown_path, to_markdown(result))
