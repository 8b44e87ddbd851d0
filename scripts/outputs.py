"""Outputs that are complete or absent: atomic NIfTI writes, writable folders checked first, results published whole.

- :class:`AtomicNibabelWriter` (``SaveImaged(writer=...)``) writes each volume to a hidden temporary file in the output
  folder and renames it, so a kill leaves no truncated ``*_seg.nii.gz`` under a final name.
- :func:`prepare_output_dir` creates the folder, proves it writable and removes temporary files a killed run left,
  before any volume is computed.
- :func:`publish` moves a finished evaluation from its staging folder to its final one in one step, so the final
  folder always holds one complete evaluation (the previous one until the new one is done), never a mix.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile

from monai.data import NibabelWriter

from .errors import InputError

__all__ = ["AtomicNibabelWriter", "prepare_output_dir", "publish"]

_TEMP_PREFIX = ".partial-"
logger = logging.getLogger(__name__)


class AtomicNibabelWriter(NibabelWriter):
    """MONAI's ``NibabelWriter`` that writes to a temporary file beside the target and renames it into place."""

    def write(self, filename, verbose: bool = False, **obj_kwargs) -> None:
        folder, name = os.path.split(os.path.abspath(str(filename)))
        os.makedirs(folder, exist_ok=True)
        staging = os.path.join(folder, f"{_TEMP_PREFIX}{os.getpid()}-{name}")  # same suffix: nibabel picks the format
        try:
            super().write(staging, verbose=verbose, **obj_kwargs)
            os.replace(staging, filename)
        except BaseException:
            if os.path.exists(staging):
                os.remove(staging)
            raise


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
        for name in os.listdir(path):
            if name.startswith(_TEMP_PREFIX):
                os.remove(os.path.join(path, name))
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
