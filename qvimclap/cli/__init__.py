"""Command-line interface: a thin shell over :mod:`qvimclap.api`.

Importing a command module registers its commands on ``app``; the imports below are that registration.
"""

from qvimclap.cli import align as _align  # noqa: F401
from qvimclap.cli import clap as _clap  # noqa: F401
from qvimclap.cli import data as _data  # noqa: F401
from qvimclap.cli import demo as _demo  # noqa: F401
from qvimclap.cli import generate as _generate  # noqa: F401
from qvimclap.cli import retrieval as _retrieval  # noqa: F401
from qvimclap.cli import serve as _serve  # noqa: F401
from qvimclap.cli import store as _store  # noqa: F401
from qvimclap.cli._app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
