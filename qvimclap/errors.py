"""User-facing errors.

Everything a user can cause (a bad file, a wrong checkpoint, a mismatched store) raises a subclass of
:class:`QvimclapError` whose message is one line: what was received, what is accepted, how to fix it.
The CLI turns these into ``Error: <message>`` and exit code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import re
from pathlib import Path

#: errno values that are the machine's state, not a bug: reported as a one-line :class:`WriteError`.
ENVIRONMENT_ERRNOS = {
    errno.ENOSPC: "no space left on device (disk full); free some space and run the command again",
    errno.EDQUOT: "disk quota exceeded; free some space and run the command again",
    errno.EROFS: "the file system is read-only; write somewhere else",
    errno.EACCES: "permission denied; write somewhere you may write, or fix the permissions",
    errno.EPERM: "operation not permitted; write somewhere you may write, or fix the permissions",
}
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: object) -> str:
    """``text`` (a path, usually) with control characters escaped (``\\n``, ``\\x1b``), so a file name can
    never forge or hide a line of the output. Every path qvimclap prints goes through here."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(text))


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (libraries' messages can be long), or its type's name."""
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


class QvimclapError(Exception):
    """Base class of every error a user can cause."""


#: How models name a clip they were given as an array (they never see its file).
_ANONYMOUS_SOURCE = re.compile(r"^(waveform \d+|<array>|imitation): ")


def about_file(err: QvimclapError, path: object) -> QvimclapError:
    """The same error, its message naming the file ``path`` where a model could only say "waveform 3"."""
    text = _ANONYMOUS_SOURCE.sub("", str(err), count=1)
    if not text.startswith(f"{path}:"):
        text = f"{path}: {text}"
    return type(err)(text)


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


class WriteError(QvimclapError):
    """An output cannot be written: the disk is full, the folder is read-only or not ours."""


def environment_errno(err: BaseException) -> int | None:
    """The errno of an OS-level write failure (disk full, read-only, no permission), else None.

    HDF5 reports these as a RuntimeError or OSError whose text holds ``errno = 28``; Python as OSError.
    """
    code = getattr(err, "errno", None)
    if code in ENVIRONMENT_ERRNOS:
        return code
    found = re.search(r"errno = (\d+)", str(err))
    if found and int(found.group(1)) in ENVIRONMENT_ERRNOS:
        return int(found.group(1))
    return None


def write_error(path: str | Path | None, err: BaseException) -> WriteError | None:
    """A one-line :class:`WriteError` naming ``path`` for an environment failure, else None."""
    code = environment_errno(err)
    if code is None:
        return None
    where = path if path is not None else getattr(err, "filename", None)
    return WriteError(f"{where}: {ENVIRONMENT_ERRNOS[code]}" if where else ENVIRONMENT_ERRNOS[code])
