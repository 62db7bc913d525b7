"""The typer application and the one place user errors become a one-line message and an exit code."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from qvimclap.errors import QvimclapError, printable, write_error

F = TypeVar("F", bound=Callable[..., Any])

#: Exit code for a user error (bad input, wrong checkpoint, existing output without --force).
USER_ERROR_EXIT = 2

app = typer.Typer(
    name="qvimclap",
    help="Find and generate sounds from vocal imitations, through CLAP's audio embedding space.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def user_errors(func: F) -> F:
    """Decorate every command: a :class:`QvimclapError`, or an OS error that is the machine's state (disk
    full, read-only folder, no permission), prints ``Error: ...`` on stderr and exits 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except QvimclapError as err:
            typer.echo(f"Error: {printable(err)}", err=True)
            raise typer.Exit(code=USER_ERROR_EXIT) from None
        except OSError as err:
            problem = write_error(None, err)
            if problem is None:
                raise
            typer.echo(f"Error: {printable(problem)}", err=True)
            raise typer.Exit(code=USER_ERROR_EXIT) from None

    return wrapper  # type: ignore[return-value]


class _PrintableFormatter(logging.Formatter):
    """Log lines name files too: control characters in them are escaped like in every other output."""

    def format(self, record: logging.LogRecord) -> str:
        return printable(super().format(record))


def setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(_PrintableFormatter("%(message)s"))
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler])


def _version(value: bool) -> None:
    if value:
        from qvimclap import __version__

        typer.echo(f"qvimclap {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    setup_logging(verbose)
