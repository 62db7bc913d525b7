"""User-facing errors.

Everything a user can cause (a bad file, a wrong checkpoint, a mismatched store) raises a subclass of
:class:`QvimclapError` whose message is one line: what was received, what is accepted, how to fix it.
The CLI turns these into ``Error: <message>`` and exit code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (libraries' messages can be long), or its type's name."""
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


class QvimclapError(Exception):
    """Base class of every error a user can cause."""


class AudioError(QvimclapError):
    """An audio file or array cannot be used (missing, unreadable, empty, non-finite)."""


class SilentAudioError(AudioError):
    """The audio is all silence (``qvimclap.audio.SILENCE_PEAK_DBFS``); callers decide whether to skip it."""


class DatasetError(QvimclapError):
    """A dataset folder or pairs file is malformed."""


class CheckpointError(QvimclapError):
    """A checkpoint or model folder is missing, of the wrong kind, or does not match the architecture."""


class StoreError(QvimclapError):
    """An embedding store or index is missing, malformed, or already exists."""


class FingerprintMismatchError(StoreError):
    """Embeddings made by a different model or preprocessing were about to be mixed."""


class MissingDependencyError(QvimclapError):
    """An optional dependency is needed for this feature."""
