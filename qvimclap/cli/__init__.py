"""Command-line interface: a thin shell over :mod:`qvimclap.api`. Each module registers its commands."""

from qvimclap.cli import align as _align  # noqa: E402,F401

# Importing a command module registers its commands on ``app`` (one line per module, below).
from qvimclap.cli import clap as _clap  # noqa: E402,F401
from qvimclap.cli import data as _data  # noqa: E402,F401
from qvimclap.cli import generate as _generate  # noqa: E402,F401
from qvimclap.cli import retrieval as _retrieval  # noqa: E402,F401
from qvimclap.cli._app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
