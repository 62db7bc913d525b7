"""Writing files so that a crash or kill never leaves half a file under the final name.

Temporary files and folders are made with the modes any tool would use (``0666`` / ``0777`` minus the umask),
not ``tempfile``'s private ``0600`` / ``0700``: they become the outputs, and a model folder or corpus must be
as shareable as a file written by ``cp``.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def temp_name(target: str | Path, suffix: str = ".tmp") -> Path:
    """A fresh hidden name beside ``target``: ``.<name>.<random>.tmp``, unique per call (never shared by two
    concurrent writers). Nothing is created."""
    target = Path(target)
    return target.with_name(f".{target.name}.{secrets.token_hex(6)}{suffix}")


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a unique temporary path beside ``target``: on success it replaces ``target``; on error it goes.

    The temporary name ends with ``target``'s suffix, so writers that pick a format from it keep working,
    and it is unique per call, so concurrent writers never share one. The file exists (empty) when yielded,
    with the umask's mode.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = temp_name(target, f".tmp{target.suffix}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:  # pragma: no cover - 48 random bits
            continue
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def make_temp_dir(target: str | Path) -> Path:
    """Create and return a unique hidden folder beside ``target`` (mode ``0777`` minus the umask), to be
    filled and then renamed to ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = temp_name(target)
        try:
            tmp.mkdir(mode=0o777)
            return tmp
        except FileExistsError:  # pragma: no cover - 48 random bits
            continue
