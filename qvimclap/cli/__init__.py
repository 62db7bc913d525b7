"""Command-line interface: a thin shell over :mod:`qvimclap.api`. Each module registers its commands."""

from qvimclap.cli._app import app

# Importing a command module registers its commands on ``app`` (one line per module, below).


def main() -> None:
    app()


__all__ = ["app", "main"]
