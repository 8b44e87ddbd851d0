"""Checkpoint policy: atomic files, the best and the latest state apart, one training per folder, exact resume.

A training writes two files into ``ckpt_dir``:

- ``model.pt``: the network's weights (a plain state dict of CPU tensors) at the best validation Dice so far, what
  inference, evaluation, export and MONAI Label load;
- ``checkpoint_latest.pt``: everything needed to continue (network, optimiser, scheduler, trainer iteration,
  early-stopping counter and the best score so far), saved at the end of every ``save_interval`` epochs.

Every write goes to a temporary file in the same folder that is renamed over the old one (:class:`AtomicFileSaver`),
so a kill or a full disk at any moment leaves either the old or the new file, never a truncated or missing one.
:func:`claim_checkpoint_dir` runs before any volume is read: it takes an exclusive lock on the folder (a second
training into the same folder is refused, with the pid of the first), and when a new training (not a resume) starts
where an earlier one left files, keeps those under ``ckpt_dir/previous/<time>/`` and says so. With ``resume``,
:class:`LatestCheckpoint` loads ``checkpoint_latest.pt`` and the training continues from its epoch; every epoch's
random draws are seeded from (seed, epoch), so a deterministic run resumed this way ends with the weights of an
uninterrupted one.
"""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import time
import zipfile
from collections.abc import Mapping

import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint
from ignite.handlers.checkpoint import BaseSaveHandler
from monai.handlers import CheckpointLoader, EarlyStopHandler
from monai.utils import set_determinism
from torch import nn

from .errors import InputError, as_bool
from .outputs import atomic_write, lock_folder, release_folder, remove_partial_files

__all__ = [
    "BEST_FILE",
    "LATEST_FILE",
    "AtomicFileSaver",
    "BestCheckpoint",
    "CPUStateDict",
    "LatestCheckpoint",
    "ResumableEarlyStop",
    "check_checkpoint",
    "claim_checkpoint_dir",
    "keep_earlier_training",
    "load_checkpoint",
    "load_initial_weights",
    "model_weights",
    "network_state",
    "release_checkpoint_dir",
]

BEST_FILE = "model.pt"
LATEST_FILE = "checkpoint_latest.pt"
LOCK_FILE = ".training.lock"
PREVIOUS_DIR = "previous"
logger = logging.getLogger(__name__)


def _rank() -> int:
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    return torch.distributed.get_rank() if distributed else 0


def _to_cpu(value):
    """``value`` with every tensor in it (nested dicts, lists, tuples) moved to the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, Mapping):
        return type(value)((k, _to_cpu(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(_to_cpu(v) for v in value)
    return value


class CPUStateDict:
    """Wraps a network (or optimiser, scheduler...) for ignite's ``Checkpoint``: ``state_dict()`` holds CPU tensors.

    DataParallel and DistributedDataParallel wrappers are unwrapped, so the saved keys are the bare network's and the
    file loads into the plain network (inference, export, MONAI Label) without renaming; a checkpoint saved on a GPU
    loads anywhere with ``weights_only=True``.

    Args:
        network: the object whose state is saved (anything with ``state_dict`` and ``load_state_dict``).
    """

    def __init__(self, network: nn.Module) -> None:
        self.network = network.module if isinstance(network, nn.Module) and hasattr(network, "module") else network

    def state_dict(self) -> dict:
        return _to_cpu(self.network.state_dict())

    def load_state_dict(self, state_dict: Mapping, strict: bool = True):
        if isinstance(self.network, nn.Module):
            return self.network.load_state_dict(state_dict, strict=strict)
        return self.network.load_state_dict(state_dict)


class AtomicFileSaver(BaseSaveHandler):
    """ignite save handler that writes one fixed file atomically: a temporary file in the same folder, flushed to
    disk, then renamed over the old one (MONAI's ``CheckpointSaver`` unlinks the old file first and writes in place).

    ``remove`` does nothing: ignite removes the previous best before saving the next one, which for a fixed file name
    would leave no model between the two; the rename replaces it instead. Only rank 0 writes.

    Args:
        dirname: the folder, created when missing.
        filename: the file's name in it.
    """

    def __init__(self, dirname: str, filename: str) -> None:
        self.dirname, self.filename = dirname, filename

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        if _rank() == 0:
            atomic_torch_save(checkpoint, os.path.join(self.dirname, self.filename))

    def remove(self, filename: str) -> None:
        """Nothing to remove: the next save replaces the file atomically."""


def atomic_torch_save(obj, path: str) -> None:
    """``torch.save`` to ``path`` atomically (:func:`scripts.outputs.atomic_write`)."""
    atomic_write(path, lambda staging: torch.save(obj, staging))


class BestCheckpoint:
    """Saves the network to ``save_dir/model.pt`` (atomically) whenever the validation metric reaches a new best.

    Attach it to the evaluator (``validate#handlers``). Its state (the best score so far) is part of
    ``checkpoint_latest.pt``, so that a resumed training does not replace the best model with a worse one.

    Args:
        network: the network.
        save_dir: the checkpoint folder.
        metric_name: the evaluator's metric to maximise.
        filename: the file's name.
    """

    def __init__(self, network: nn.Module, save_dir: str, metric_name: str, filename: str = BEST_FILE) -> None:
        self.checkpoint = Checkpoint(
            to_save={"model": CPUStateDict(network)},
            save_handler=AtomicFileSaver(save_dir, filename),
            score_function=lambda engine: engine.state.metrics[metric_name],
            score_name=metric_name,
            n_saved=1,
        )

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.checkpoint)

    def state_dict(self) -> dict:
        return self.checkpoint.state_dict()

    def load_state_dict(self, state_dict: Mapping) -> None:
        self.checkpoint.load_state_dict(state_dict)


class ResumableEarlyStop(EarlyStopHandler):
    """MONAI's ``EarlyStopHandler`` whose counter and best score are saved and restored with the training."""

    def state_dict(self) -> dict:
        return dict(self._handler.state_dict()) if self._handler is not None else {}

    def load_state_dict(self, state_dict: Mapping) -> None:
        if self._handler is not None and state_dict:
            self._handler.load_state_dict(state_dict)


class LatestCheckpoint:
    """Saves everything a training needs to continue, and continues a training from it.

    Attached to the trainer (after its own handlers, so that validation and early stopping of an epoch come first):

    - at every epoch's start, seeds torch, numpy, ``random`` and the dataset's random transforms from
      ``seed + epoch``, so that an epoch draws the same slices and augmentations whether or not the run was resumed;
    - every ``interval`` epochs (and when training ends), writes ``save_dir/checkpoint_latest.pt`` atomically;
    - with ``resume``, loads that file when the trainer starts (MONAI's ``CheckpointLoader``: a larger ``max_epochs``
      than the checkpoint's trains longer).

    Args:
        save_dir: the checkpoint folder.
        objects: what to save and restore, by name (network, optimizer, lr_scheduler, trainer, early_stop, best...).
        seed: the run's seed.
        dataset: the training dataset, whose transform's random state is reseeded every epoch (``None``: none).
        interval: epochs between saves.
        snapshot_interval: every this many epochs, the network is also kept as ``save_dir/snapshots/
            model_epoch<N>.pt`` (weights only, for a curve of a long training; 0: never).
        resume: load ``checkpoint_latest.pt`` when the trainer starts.
        map_location: where loaded tensors go first.
    """

    def __init__(
        self,
        save_dir: str,
        objects: Mapping[str, object],
        seed: int = 0,
        dataset=None,
        interval: int = 1,
        resume: bool = False,
        map_location: str | torch.device = "cpu",
        snapshot_interval: int = 0,
    ) -> None:
        self.save_dir, self.objects, self.seed, self.dataset = save_dir, dict(objects), int(seed), dataset
        self.snapshot_interval = int(snapshot_interval)
        self.interval, self.resume, self.map_location = int(interval), as_bool(resume, "resume"), map_location
        self.path = os.path.join(save_dir, LATEST_FILE)

    def _seed_epoch(self, engine: Engine) -> None:
        seed = (self.seed + 1_000_003 * engine.state.epoch) % (2**32)
        set_determinism(seed=seed)
        transform = getattr(self.dataset, "transform", None)
        if hasattr(transform, "set_random_state"):
            transform.set_random_state(seed=seed)

    def attach(self, trainer: Engine) -> None:
        if self.resume:
            loader = CheckpointLoader(
                load_path=self.path,
                load_dict={k: CPUStateDict(v) for k, v in self.objects.items()},
                map_location=self.map_location,
            )
            configured = self._schedule(trainer)
            loader.attach(trainer)
            trainer.add_event_handler(Events.STARTED, self._resumed, configured)
        trainer.add_event_handler(Events.EPOCH_STARTED, self._seed_epoch)
        saver = Checkpoint(
            to_save={k: CPUStateDict(v) for k, v in self.objects.items()},
            save_handler=AtomicFileSaver(self.save_dir, LATEST_FILE),
            n_saved=1,
        )
        trainer.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval) | Events.COMPLETED, saver)
        if self.snapshot_interval > 0 and "model" in self.objects:
            trainer.add_event_handler(Events.EPOCH_COMPLETED(every=self.snapshot_interval), self._snapshot)

    def _schedule(self, trainer: Engine) -> dict[str, float]:
        """What a resumed training takes from its checkpoint rather than from the options: the iterations per epoch
        (ignite's state) and the initial learning rate (the optimiser's state)."""
        schedule = {"iterations per epoch": float(trainer.state.epoch_length or 0)}
        optimizer = self.objects.get("optimizer")
        if isinstance(optimizer, torch.optim.Optimizer):
            group = optimizer.param_groups[0]
            schedule["learning rate"] = float(group.get("initial_lr", group["lr"]))
        return schedule

    def _resumed(self, engine: Engine, configured: dict[str, float]) -> None:
        logger.info(f"resumed at epoch {engine.state.epoch}")
        loaded = self._schedule(engine)
        changed = [
            f"{k} {loaded[k]:g} (the options give {configured[k]:g})" for k in loaded if loaded[k] != configured[k]
        ]
        if changed:
            logger.warning(
                f"the resumed training continues its checkpoint's schedule: {', '.join(changed)}; --slices_per_volume, "
                "--batch_size, --iterations_per_epoch and --learning_rate apply to a new training"
            )

    def _snapshot(self, engine: Engine) -> None:
        if _rank() == 0:
            path = os.path.join(self.save_dir, "snapshots", f"model_epoch{engine.state.epoch:04d}.pt")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            atomic_torch_save(CPUStateDict(self.objects["model"]).state_dict(), path)


def load_checkpoint(path: str) -> Mapping:
    """Load a checkpoint file safely (``weights_only=True``, CPU), refusing a missing or unreadable one in one line."""
    if not os.path.isfile(path):
        raise InputError(
            f"checkpoint '{path}' does not exist: train first (python -m monai.bundle run training "
            "--config_file configs/train.yaml) or set --checkpoint/--ckpt_dir to a trained model.pt"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        # a weights_only refusal suggests weights_only=False: never do that for a file of unknown origin
        reason = str(e).split("\n")[0][:200]
        raise InputError(
            f"checkpoint '{path}' cannot be read as PyTorch weights (truncated, corrupt, or holding code, which is "
            f"never loaded): {reason}"
        ) from e
    if not isinstance(state, Mapping):
        raise InputError(f"checkpoint '{path}' holds a {type(state).__name__}; expected a state dict")
    return state


def _describe_mismatch(state: Mapping, expected: Mapping) -> str:
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"'{k}' is {list(state[k].shape)} in the file but {list(v.shape)} in the network"
        for k, v in expected.items()
        if k in state and isinstance(state[k], torch.Tensor) and tuple(state[k].shape) != tuple(v.shape)
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} weights missing (e.g. '{missing[0]}')")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. '{unexpected[0]}')")
    if shapes:
        parts.append(f"{len(shapes)} of other shape (e.g. {shapes[0]})")
    return "; ".join(parts)


def network_state(path: str) -> Mapping:
    """The network's weights in a checkpoint file, read as MONAI's ``CheckpointLoader`` reads it with ``load_dict``
    ``{"model": network}``: a ``model.pt`` is the state dict itself, a training checkpoint (``checkpoint_latest.pt``:
    network, optimiser, scheduler, trainer) holds it as ``model``. So the latest epoch of an interrupted training
    segments, is packaged or fine-tunes as a ``model.pt`` does (MONAI's ``ckpt_export`` reads it with
    ``--key_in_ckpt model``).

    Raises:
        InputError: the file is missing or unreadable (:func:`load_checkpoint`).
    """
    return model_weights(load_checkpoint(path))


def model_weights(state: Mapping) -> Mapping:
    """The network's weights in a loaded checkpoint: ``state`` itself (a ``model.pt``), or its ``model`` entry (a
    training checkpoint)."""
    model = state.get("model")
    return model if isinstance(model, Mapping) else state


_FIT_HINT = "set --arch, --se, --features and the label protocol as they were in training"


def check_checkpoint(path: str, network: nn.Module | None = None, hint: str = _FIT_HINT) -> str:
    """Refuse, in one line and before any volume is read, a checkpoint that is missing, unreadable, or of another
    network (architecture, SE variant, features, number of classes).

    Args:
        path: the checkpoint file: a ``model.pt`` or a training checkpoint (:func:`network_state`).
        network: the network it must load into; ``None`` checks only that it reads.
        hint: what the user can do about another network's checkpoint (the end of the message).

    Returns:
        ``path``.
    """
    state = network_state(path)
    if network is not None:
        bare = network.module if hasattr(network, "module") else network
        mismatch = _describe_mismatch(state, bare.state_dict())
        if mismatch:
            raise InputError(
                f"checkpoint '{path}' does not fit the configured network ({type(bare).__name__}): {mismatch}; {hint}"
            )
    return path


def load_initial_weights(network: nn.Module, path: str | None = None) -> bool:
    """Start a training from the weights in ``path`` (a ``model.pt`` of the same network, or a training checkpoint's
    network) instead of random ones: fine-tuning, or a second phase of a schedule with another learning rate. A
    resumed training overwrites them with its checkpoint's.

    Args:
        network: the configured network (a DDP/DataParallel wrapper is unwrapped).
        path: the weights file; ``None`` or empty: nothing loaded.

    Returns:
        whether weights were loaded.

    Raises:
        InputError: the file is missing, unreadable or of another network (one line, before any volume is read).
    """
    if not path:
        return False
    check_checkpoint(path, network)
    bare = network.module if hasattr(network, "module") else network
    bare.load_state_dict(network_state(path))
    logger.info(f"training starts from the weights in '{path}'")
    return True


def release_checkpoint_dir(ckpt_dir: str) -> bool:
    """Release the lock :func:`claim_checkpoint_dir` took, when the training ends in a process that goes on (MONAI
    Label trains in its server's process); a process that ends releases it anyway.

    Returns:
        whether a lock was released.
    """
    return release_folder(ckpt_dir, LOCK_FILE)


def _keep_previous(ckpt_dir: str) -> str | None:
    """Keep an earlier training's files under ``ckpt_dir/previous/<time>/`` (hard links where possible)."""
    files = [n for n in (BEST_FILE, LATEST_FILE) if os.path.isfile(os.path.join(ckpt_dir, n))]
    if not files:
        return None
    newest = max(os.path.getmtime(os.path.join(ckpt_dir, n)) for n in files)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(newest))
    target = os.path.join(ckpt_dir, PREVIOUS_DIR, stamp)
    suffix = 1
    while os.path.exists(target):
        suffix += 1
        target = os.path.join(ckpt_dir, PREVIOUS_DIR, f"{stamp}-{suffix}")
    os.makedirs(target)
    for name in files:
        source, copy = os.path.join(ckpt_dir, name), os.path.join(target, name)
        try:
            os.link(source, copy)  # the training replaces files by renaming, so the link keeps the old content
        except OSError:
            shutil.copy2(source, copy)
    return target


def claim_checkpoint_dir(
    ckpt_dir: str, resume: bool = False, network: nn.Module | None = None, max_epochs: int | None = None
) -> str:
    """Make ``ckpt_dir`` this training's, before any volume is read.

    Takes an exclusive lock (a second training into the same folder is refused); removes temporary files a killed
    save left; with ``resume``, checks that ``checkpoint_latest.pt`` exists, reads, fits ``network`` and has epochs
    left (an earlier training's files are kept by :func:`keep_earlier_training`, once the inputs are checked). Only
    rank 0 of a distributed training locks.

    Args:
        ckpt_dir: the checkpoint folder.
        resume: the training continues from ``checkpoint_latest.pt``.
        network: the configured network, to check a resumed checkpoint against.
        max_epochs: the configured number of epochs.

    Returns:
        ``ckpt_dir``.
    """
    latest = os.path.join(ckpt_dir, LATEST_FILE)
    resume = as_bool(resume, "resume")
    if resume:
        if not os.path.isfile(latest):
            raise InputError(
                f"--resume true but '{latest}' does not exist; start the training without --resume, or give the "
                "--ckpt_dir of the training to continue"
            )
        check_checkpoint(latest, network)
        trainer = load_checkpoint(latest).get("trainer", {})
        # ignite's Engine.state_dict() holds the iterations and the epoch length, not the epoch
        done = trainer.get("iteration", 0) // max(int(trainer.get("epoch_length") or 1), 1)
        if max_epochs is not None and done >= max_epochs:
            raise InputError(
                f"the training in '{ckpt_dir}' already ran {done} of --epochs {max_epochs}; give a larger --epochs "
                "to train longer"
            )
    if _rank() != 0:
        return ckpt_dir
    lock_folder(ckpt_dir, LOCK_FILE, "training", "ckpt_dir")
    remove_partial_files(ckpt_dir)
    return ckpt_dir


def keep_earlier_training(ckpt_dir: str, resume: bool = False) -> str:
    """Keep an earlier training's ``model.pt`` and ``checkpoint_latest.pt`` under ``ckpt_dir/previous/<time>/``
    (logged), so that a new training replaces nothing silently; after every input check, so that a refused training
    leaves no copy behind. Nothing to keep when resuming; only rank 0 of a distributed training keeps files.

    Returns:
        ``ckpt_dir``.
    """
    if as_bool(resume, "resume") or _rank() != 0:
        return ckpt_dir
    kept = _keep_previous(ckpt_dir)
    if kept:
        logger.warning(
            f"'{ckpt_dir}' holds an earlier training's files: kept in '{kept}'; this training replaces them "
            "(continue the earlier one instead with --resume true)"
        )
    return ckpt_dir
