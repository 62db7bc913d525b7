"""``qvimclap serve``: a local web page and JSON API over the library's search and generation.

:mod:`~qvimclap.serve.library` holds the loaded indexes and checks uploads, :mod:`~qvimclap.serve.jobs`
queues generation, :mod:`~qvimclap.serve.app` is the FastAPI app and :mod:`~qvimclap.serve.server` runs it.
The web dependencies are the optional extra ``pip install -e ".[serve]"``; nothing here imports them at
import time.
"""

from qvimclap.serve.app import ServeState, create_app, is_loopback, load_state
from qvimclap.serve.library import Limits

__all__ = ["Limits", "ServeState", "create_app", "is_loopback", "load_state"]
