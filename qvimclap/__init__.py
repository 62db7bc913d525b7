"""qvimclap: find and generate sounds from vocal imitations, through CLAP's audio embedding space."""

from qvimclap.errors import QvimclapError

__version__ = "0.1.0"

__all__ = ["QvimclapError", "__version__"]
