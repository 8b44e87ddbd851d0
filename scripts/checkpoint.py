"""Checkpoints that hold CPU tensors, so a bundle trained on a GPU loads anywhere (with ``weights_only=True``)."""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import nn

__all__ = ["CPUStateDict", "check_checkpoint"]


class CPUStateDict:
    """Wraps a network for ignite's ``Checkpoint``/MONAI's ``CheckpointSaver``: ``state_dict()`` returns CPU copies.

    DataParallel and DistributedDataParallel wrappers are unwrapped, so the saved keys are the bare network's and the
    file loads into the plain network (inference, export, MONAI Label) without renaming.

    Args:
        network: the network whose weights are saved.
    """

    def __init__(self, network: nn.Module) -> None:
        self.network = network.module if hasattr(network, "module") else network

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in self.network.state_dict().items()}

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor], strict: bool = True):
        return self.network.load_state_dict(state_dict, strict=strict)


def check_checkpoint(path: str) -> str:
    """Refuse, in one line, a checkpoint that does not exist, before any volume is read.

    Returns:
        ``path``.
    """
    if not os.path.isfile(path):
        raise ValueError(
            f"checkpoint '{path}' does not exist: train first (python -m monai.bundle run training "
            "--config_file configs/train.yaml) or set --checkpoint/--ckpt_dir to a trained model.pt"
        )
    return path
