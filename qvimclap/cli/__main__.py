"""``python -m qvimclap.cli`` (and ``torchrun -m qvimclap.cli align ...``) run the CLI."""

from qvimclap.cli import main

main()
