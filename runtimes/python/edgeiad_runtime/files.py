"""Field-grade file writing: atomic, synced, and with the modes the umask gives any normal file.

Temporary files and folders (mkstemp, mkdtemp) are created 0600/0700 and keep that mode when renamed
into place: an artifact exported by one user would then be unreadable by the service user that runs it.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from .errors import ArtifactError, OutputError

# errno values that mean "this place cannot take the write", not a bug: reported as OutputError.
WRITE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EFBIG, errno.EIO}


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (os.umask is a race between threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def normal_mode(directory: bool = False) -> int:
    """The mode open()/mkdir() would give: 0644/0755 under the usual umask 022."""
    return (0o777 if directory else 0o666) & ~current_umask()


def atomic_write(path: str | Path, parts: Iterable[bytes]) -> None:
    """Write bytes to a temporary file beside `path`, sync it, give it the normal mode, then rename it into place."""
    path = Path(path)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            for part in parts:
                handle.write(part)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, normal_mode())
        os.replace(temporary, path)
    except BaseException as exc:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:
            raise write_failed(path, exc) from None
        raise


def write_failed(path: str | Path, exc: OSError) -> OutputError:
    """The one-line error for a write the disk or the permissions refused."""
    reason = exc.strerror or type(exc).__name__
    return OutputError(f"cannot write {path} ({reason}): free disk space or choose a writable location")


def unreadable(path: str | Path, folder: str | Path) -> ArtifactError:
    """The one-line error for an artifact file the current user may not read."""
    user = f"uid {os.getuid()}" if hasattr(os, "getuid") else "this user"
    return ArtifactError(
        f"{path} is not readable by {user}: make the artifact readable by the service user "
        f"(e.g. chmod -R a+rX {folder}) or re-export it with umask 022"
    )
