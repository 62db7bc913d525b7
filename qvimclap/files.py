"""Writing files so that a crash or kill never leaves half a file under the final name.

Temporary files and folders are made with the modes any tool would use (``0666`` / ``0777`` minus the umask),
not ``tempfile``'s private ``0600`` / ``0700``: they become the outputs, and a model folder or corpus must be
as shareable as a file written by ``cp``. They are hidden siblings of their target, ``.<name>.<random>.tmp``;
a writer holds an advisory lock (``flock``) on its temporary folder or store file, so the next writer of the
same target can tell a killed writer's leftovers (unlocked) from a live one's and remove them.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from qvimclap.errors import ENVIRONMENT_ERRNOS, WriteError, write_error

#: Free space below which a failed write is put down to a full disk, when the error does not say why.
_NEARLY_FULL_BYTES = 1 << 20


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
    with the umask's mode. A write that fails for lack of space or permission raises
    :class:`~qvimclap.errors.WriteError` naming ``target`` (libraries often say only "write failed").
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = _create_temp_file(target)
    except OSError as err:
        raise write_error(target, err) or err from None
    try:
        yield tmp
        os.replace(tmp, target)
    except Exception as err:
        problem = write_failure(target, err)
        if problem is None:
            raise
        raise problem from None
    finally:
        tmp.unlink(missing_ok=True)


def write_failure(target: str | Path, err: BaseException) -> WriteError | None:
    """A one-line WriteError when writing ``target`` failed because of the machine (disk full, read-only,
    no permission), else None. Errors that lost their errno (``torch.save``, libsndfile's "System error.")
    count as a full disk when the target's file system has under 1 MiB free."""
    problem = write_error(target, err)
    if problem is not None or not isinstance(err, (OSError, RuntimeError)):
        return problem
    try:
        stats = os.statvfs(Path(target).parent)
    except OSError:
        return None
    if stats.f_bavail * stats.f_frsize < _NEARLY_FULL_BYTES:
        return WriteError(f"{target}: {ENVIRONMENT_ERRNOS[errno.ENOSPC]}")
    return None


def check_writable(folder: str | Path) -> None:
    """Raise WriteError now if files cannot be created in ``folder``: better before an hour of work than after
    it. A missing folder is not made (a run that fails later leaves nothing); its nearest existing parent is
    probed instead."""
    folder = Path(folder).absolute()
    probe_in = next((p for p in (folder, *folder.parents) if p.exists()), folder)
    try:
        if not probe_in.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "not a folder", str(probe_in))
        _create_temp_file(probe_in / "probe").unlink()
    except OSError as err:
        problem = write_error(probe_in, err)
        raise problem or WriteError(f"{probe_in}: cannot write here ({err.strerror})") from None


@contextmanager
def locked_temp_dir(target: str | Path) -> Iterator[Path]:
    """A new hidden folder beside ``target`` (mode ``0777`` minus the umask), locked while the block runs, to
    be filled and renamed to ``target`` by the caller. Folders of earlier, killed writers are removed first;
    on an error the folder goes."""
    target = Path(target)
    remove_stale_temps(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = temp_name(target)
        try:
            tmp.mkdir(mode=0o777)
            break
        except FileExistsError:  # pragma: no cover - 48 random bits
            continue
    fd = os.open(tmp, os.O_RDONLY)
    try:
        _lock(fd)
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        os.close(fd)


def remove_stale_temps(target: str | Path) -> None:
    """Delete ``target``'s temporary siblings that no live writer holds (leftovers of killed writers)."""
    target = Path(target)
    for tmp in target.parent.glob(f".{target.name}.*.tmp"):
        try:
            fd = os.open(tmp, os.O_RDONLY)
        except OSError:
            continue
        try:
            if not _lock(fd, wait=False):
                continue  # a live writer's
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
        finally:
            os.close(fd)


def _create_temp_file(target: Path) -> Path:
    while True:
        tmp = temp_name(target, f".tmp{target.suffix}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:  # pragma: no cover - 48 random bits
            continue


def _lock(fd: int, *, wait: bool = True) -> bool:
    """Take an exclusive ``flock`` on ``fd`` (the lock HDF5 writers take too); False if held elsewhere."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no leftovers are ever taken for stale
        return wait
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True
