"""One-line refusals: which errors are the bundle's own, option checks, and switches given on the command line."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from scripts.errors import (
    InputError,
    as_bool,
    check_device,
    check_options,
    check_slice_size,
    find_refusal,
    refusal_message,
    refuse_unknown_options,
)


def test_switches_read_as_the_command_line_gives_them():
    # the runner (fire) passes --resume false as the string 'false', which Python takes as true
    assert [as_bool(v) for v in (True, "true", "True", "yes", "1", 1)] == [True] * 6
    assert [as_bool(v) for v in (False, "false", "FALSE", "no", "off", "0", 0)] == [False] * 7
    with pytest.raises(InputError, match=r"^--resume 'maybe' is not a switch; expected true or false$"):
        as_bool("maybe", "resume")


def test_option_ranges():
    assert check_options(positive={"epochs": 3, "learning_rate": 0.01}, non_negative={"momentum": 0})
    for options, message in (
        ({"positive": {"epochs": 0}}, "^--epochs 0 is out of range; expected a number > 0$"),
        ({"positive": {"learning_rate": float("nan")}}, "--learning_rate nan is out of range"),
        ({"positive": {"batch_size": "4"}}, "--batch_size '4' is out of range"),
        ({"non_negative": {"weight_decay": -1e-4}}, "expected a number >= 0"),
        (
            {"positive": {"epochs": 2.5}, "integers": ["epochs"]},
            r"^--epochs 2.5 is out of range; expected an integer > 0$",
        ),
        ({"non_negative": {"num_workers": 0.5}, "integers": ["num_workers"]}, "expected an integer >= 0"),
    ):
        with pytest.raises(InputError, match=message):
            check_options(**options)
    assert check_options(positive={"epochs": 3, "learning_rate": 0.5}, integers=["epochs"])
    assert check_options(positive={"epochs": 3.0}, integers=["epochs"])  # a whole number written as a float


def test_slice_sizes():
    assert check_slice_size([-1, -1], 16) and check_slice_size([32, -1], 16) and check_slice_size((16, 48), 16)
    for value in (32, [8, 8], [0, 0], [32, 32, 32], [32.5, 32], ["32", 32], [True, 32], None):
        with pytest.raises(InputError, match=r"^--slice_size .* is not a slice size; expected \[H, W\], each -1"):
            check_slice_size(value, 16)


def test_devices_this_machine_cannot_run_on_are_refused():
    assert check_device("cpu") and check_device(torch.device("cpu"))
    with pytest.raises(InputError, match=r"^--device 'gpu' is not a device; expected cpu, cuda or cuda:N$"):
        check_device("gpu")
    if torch.cuda.is_available():
        assert check_device("cuda:0")
        with pytest.raises(InputError, match="CUDA device\\(s\\) visible"):
            check_device(f"cuda:{torch.cuda.device_count()}")
    else:
        with pytest.raises(
            InputError, match=r"^--device cuda: (this PyTorch is a CPU-only build|no CUDA GPU is visible)"
        ):
            check_device("cuda")


def test_refusals_are_found_inside_the_wrappers_and_bugs_are_not():
    try:
        try:
            check_options(positive={"epochs": 0})
        except InputError as e:
            raise RuntimeError("Failed to instantiate component") from e
    except RuntimeError as wrapped:
        assert refusal_message(find_refusal(wrapped)) == "--epochs 0 is out of range; expected a number > 0"
    # a refusal restated with more to say (raise ... from None) is the one reported, not the one it replaced
    try:
        try:
            try:
                check_options(positive={"epochs": 0})
            except InputError as e:
                raise InputError(f"--views 2: {e}") from None
        except InputError as e:
            raise RuntimeError("Failed to instantiate component") from e
    except RuntimeError as wrapped:
        assert refusal_message(find_refusal(wrapped)) == "--views 2: --epochs 0 is out of range; expected a number > 0"
    try:
        np.zeros(3).reshape(2)  # a ValueError raised by numpy: not a refusal, keeps its traceback
    except ValueError as e:
        assert find_refusal(e) is None


def test_misspelled_bundle_options_are_refused(tmp_path):
    # MONAI's runner adds any --name to the config: --epoch 1 ran the default 20 epochs, a misspelled --datalist
    # trained on the generated dataset
    import monai.bundle

    main = os.path.join(os.path.dirname(monai.bundle.__file__), "__main__.py")
    train = os.path.join(os.path.dirname(__file__), "..", "configs", "train.yaml")
    evaluate = os.path.join(os.path.dirname(__file__), "..", "configs", "evaluate.yaml")

    def command(*options: str, config: str = train) -> list[str]:
        return [main, "run", "training", "--config_file", config, *options]

    fine = ["--epochs", "3", "--dataset-dir", "d", "--train#trainer#amp", "false", "--train::trainer::amp", "false",
            "--meta_file", "m.json", "--tracking_uri", "u", "--resume=true", "--debug"]  # fmt: skip
    assert refuse_unknown_options(command(*fine))
    assert refuse_unknown_options(command("--checkpoint", "x.pt", config=f"['{train}','{evaluate}']"))
    for options, message in (
        (
            ["--epoch", "1"],
            r"^--epoch is not an option of these configs: nothing would read it \(did you mean --epochs\?\)$",
        ),
        (["--datalists=x.json"], r"^--datalists .*\(did you mean --datalist\?\)$"),
        (
            ["--train#trainerx#amp", "false"],
            r"^--train#trainerx#amp is not an option of these configs: nothing would read it$",
        ),
        (["--checkpoint", "x.pt"], "--checkpoint is not an option"),  # evaluation's, not training's
    ):
        with pytest.raises(InputError, match=message):
            refuse_unknown_options(command(*options))
    args_file = tmp_path / "args.json"
    args_file.write_text(json.dumps({"config_file": train, "epoch": 1}))
    with pytest.raises(InputError, match=r"^--epoch is not an option"):
        refuse_unknown_options([main, "run", "training", "--args_file", str(args_file)])
    # MONAI Label and Python callers run the configs under their own command lines: not judged
    assert refuse_unknown_options(["/usr/bin/monailabel", "start_server", "--conf", "models", "x"])
