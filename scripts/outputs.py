"""Outputs that are complete or absent: atomic NIfTI writes, writable folders checked first, results published whole.

- :class:`AtomicNibabelWriter` (``SaveImaged(writer=...)``) writes each volume to a hidden temporary file in the output
  folder and renames it, so a kill leaves no truncated ``*_seg.nii.gz`` under a final name.
- :func:`prepare_output_dir` creates the folder, proves it writable and removes temporary files a killed run left,
  before any volume is computed.
- :func:`publish` moves a finished evaluation from its staging folder to its final one in one step, so the final
  folder always holds one complete evaluation (the previous one until the new one is done), never a mix.
- :func:`lock_folder` keeps a second run of the same kind out of a folder one is writing (a training's ckpt_dir, an
  evaluation's output_dir), until the process ends or :func:`release_folder`.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable

from monai.data import NibabelWriter

from .errors import InputError

try:  # POSIX advisory locks; elsewhere folders are not locked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

__all__ = [
    "TEMP_PREFIX",
    "AtomicNibabelWriter",
    "atomic_write",
    "lock_folder",
    "prepare_output_dir",
    "publish",
    "release_folder",
    "remove_partial_files",
]

# temporary files of atomic writes start with this; a later run removes those a kill left behind
TEMP_PREFIX = ".partial-"
# locks this process holds, by folder and lock file, so that a second run in the same process (MONAI Label's training,
# a workflow run twice) reuses its own
_HELD_LOCKS: dict[tuple[str, str], int] = {}
logger = logging.getLogger(__name__)


def atomic_write(path: str, write: Callable[[str], object]) -> None:
    """Write ``path`` through ``write(staging_path)`` into a temporary file beside it (same suffix, so format
    detection by name works), flushed to disk and renamed over ``path`` with the permissions of a new file.

    A kill or a full disk at any moment leaves the old file or the new one, never a truncated one; a failed write
    leaves no temporary file.
    """
    folder, name = os.path.split(os.path.abspath(str(path)))
    os.makedirs(folder, exist_ok=True)
    descriptor, staging = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=f"-{name}", dir=folder)
    os.close(descriptor)
    try:
        write(staging)
        with open(staging, "rb+") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o666 & ~umask)  # mkstemp makes files only their owner can read
        os.replace(staging, path)
    except BaseException:
        if os.path.exists(staging):
            os.remove(staging)
        raise


def remove_partial_files(folder: str, older_than_s: float = 600.0) -> None:
    """Remove the temporary files of atomic writes that a killed run left in ``folder``: those untouched for
    ``older_than_s`` seconds, so that another run writing into the same folder (array jobs sharing an output folder)
    keeps the file it is writing."""
    now = time.time()
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if name.startswith(TEMP_PREFIX):
            try:
                if now - os.path.getmtime(path) >= older_than_s:
                    os.remove(path)
            except FileNotFoundError:  # renamed into place or removed by its own run meanwhile
                pass


class AtomicNibabelWriter(NibabelWriter):
    """MONAI's ``NibabelWriter`` that writes to a temporary file beside the target and renames it into place, and
    keeps the volume's spatial dimensions.

    MONAI's writer squeezes every trailing dimension of size 1 (``squeeze_end_dims``), so a single-slice volume
    ``(H, W, 1)`` would be written as ``(H, W)``, and a 2D NIfTI cannot take the 3D affine of an oblique or
    reoriented scan (MONAI fails on it, after the whole segmentation). Here only the channel (of size 1) is dropped:
    ``(1, H, W, D) -> (H, W, D)`` whatever ``D`` is.
    """

    def set_data_array(self, data_array, channel_dim=0, squeeze_end_dims: bool = True, **kwargs) -> None:
        super().set_data_array(data_array, channel_dim=channel_dim, squeeze_end_dims=False, **kwargs)
        if squeeze_end_dims and self.data_obj.shape[-1] == 1:  # the channel, last once channel-last
            self.data_obj = self.data_obj[..., 0]

    def write(self, filename, verbose: bool = False, **obj_kwargs) -> None:
        atomic_write(filename, lambda staging: super(AtomicNibabelWriter, self).write(staging, verbose, **obj_kwargs))


def prepare_output_dir(path: str, option: str = "output_dir", fresh: bool = False) -> str:
    """Create ``path``, check that files can be written there, and remove temporary files a killed run left.

    Args:
        path: the folder.
        option: the option that set it, for the message.
        fresh: empty it first (a staging folder of an unfinished earlier run).

    Returns:
        ``path``.

    Raises:
        InputError: when the folder cannot be created or written, naming the option and the folder.
    """
    try:
        if fresh and os.path.isdir(path):
            shutil.rmtree(path)
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
        remove_partial_files(path)
    except OSError as e:
        raise InputError(f"--{option} '{path}' cannot be written: {e.strerror or e}; expected a writable folder") from e
    return path


def publish(staging: str, final: str) -> str:
    """Replace the folder ``final`` with the finished ``staging`` folder.

    The old folder is renamed aside before the new one takes its name and removed only after, so a kill in between
    leaves ``final`` or ``final.old`` complete.

    Returns:
        ``final``.
    """
    old = final.rstrip(os.sep) + ".old"
    if os.path.isdir(old):
        shutil.rmtree(old)
    if os.path.isdir(final):
        os.rename(final, old)
    os.rename(staging, final)
    if os.path.isdir(old):
        shutil.rmtree(old)
    logger.info(f"results in {final}")
    return final


def lock_folder(folder: str, lock_file: str, what: str, option: str) -> str:
    """Hold an exclusive lock on ``folder`` until the process ends (released by the OS, even on kill -9) or
    :func:`release_folder`: a second run of the same kind into the folder is refused instead of overwriting or
    clearing what the first one writes.

    Args:
        folder: the folder (created if missing).
        lock_file: the lock's file name in it (one per kind of run: ``.training.lock``, ``.evaluation.lock``).
        what: the kind of run, for the message (``"training"``).
        option: the option that set the folder, for the message (``"ckpt_dir"``).

    Returns:
        ``folder``.

    Raises:
        InputError: when another process holds the lock, naming it (its pid and start time), or when the folder
            cannot be created or written.
    """
    key = (os.path.realpath(folder), lock_file)
    if fcntl is None or key in _HELD_LOCKS:
        return folder
    try:
        os.makedirs(folder, exist_ok=True)
        descriptor = os.open(os.path.join(folder, lock_file), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise InputError(
            f"--{option} '{folder}' cannot be written: {e.strerror or e}; expected a writable folder"
        ) from e
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(descriptor, 200).decode(errors="replace").strip() or "another process"
        os.close(descriptor)
        raise InputError(
            f"{option} '{folder}' is in use by another {what} ({holder}); wait for it to end, or give this one "
            f"another --{option}"
        ) from None
    except OSError as e:  # a filesystem without locks (some network mounts): the run goes on, unguarded
        os.close(descriptor)
        logger.warning(
            f"--{option} '{folder}' cannot be locked ({e.strerror or e}): a second {what} there is not refused"
        )
        return folder
    os.ftruncate(descriptor, 0)
    os.write(descriptor, f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode())
    _HELD_LOCKS[key] = descriptor
    return folder


def release_folder(folder: str, lock_file: str) -> bool:
    """Release the lock :func:`lock_folder` took, for a process that goes on after the run (a process that ends
    releases it anyway).

    Returns:
        whether a lock was released.
    """
    descriptor = _HELD_LOCKS.pop((os.path.realpath(folder), lock_file), None)
    if descriptor is None:
        return False
    os.close(descriptor)  # closing the file releases its flock
    return True
