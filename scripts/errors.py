"""Refusals a person can read: one line naming the option or file, printed last, without a Python traceback.

The bundle's checks raise ``ValueError`` (or :class:`InputError`) with a one-line message before any work starts, but
MONAI's config parser wraps every error of a component in ``RuntimeError: Failed to instantiate component ...`` and the
interpreter then prints a traceback of 60-400 lines that buries the message. :func:`one_line_errors` installs a
``sys.excepthook`` that finds the bundle's own refusal in the exception chain and prints only its message; any other
error (a bug, an out-of-memory error) keeps its full traceback. ``--debug true`` keeps every traceback.

Which errors are refusals: a ``ValueError`` raised by the bundle's own code (the innermost frame of its traceback is in
this ``scripts`` package), and a distributed backend error (a rank that died or froze), which is reported with the
timeout that ended it.
"""

from __future__ import annotations

import ast
import difflib
import inspect
import os
import re
import sys
from collections.abc import Sequence
from types import TracebackType

__all__ = [
    "InputError",
    "as_bool",
    "as_choice",
    "check_device",
    "check_options",
    "check_slice_size",
    "find_refusal",
    "one_line_errors",
    "refusal_message",
    "refuse_unknown_options",
]

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


class InputError(ValueError):
    """A bad input or option, refused before work starts; its message is one line naming the file or option."""


def _chain(error: BaseException):
    """The exception and its causes and contexts, outermost first, each once; a context suppressed by ``raise ...
    from None`` (a refusal restated with more to say) is not followed, as Python's own traceback does not show it."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)


def _raised_here(error: BaseException) -> bool:
    """Whether the innermost frame of the error's traceback is in this package."""
    tb = error.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(_PACKAGE_DIR + os.sep)


# what gloo and NCCL say when a peer died or stopped answering (raised from C++ hooks, e.g. DDP's backward allreduce)
_COLLECTIVE_FAILURE = re.compile(r"gloo|nccl|timed out|timeout|pair closure|connection (closed|reset)", re.IGNORECASE)


def _is_distributed_failure(error: BaseException) -> bool:
    """A collective that failed: NCCL's ``DistBackendError``, or gloo's ``RuntimeError`` raised inside torch's
    distributed code or, in a distributed run, with gloo's or NCCL's words for a lost peer."""
    try:
        import torch.distributed as dist
    except ImportError:  # torch without distributed support
        return False
    if isinstance(error, dist.DistBackendError):
        return True
    if not isinstance(error, RuntimeError):
        return False
    if dist.is_available() and dist.is_initialized() and _COLLECTIVE_FAILURE.search(str(error)):
        return True
    tb = error.__traceback__
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename
        if f"torch{os.sep}distributed" in name or name.endswith(f"parallel{os.sep}distributed.py"):
            return True
        tb = tb.tb_next
    return False


def find_refusal(error: BaseException) -> BaseException | None:
    """The bundle's own refusal (or a distributed failure) in ``error``'s chain, innermost first; ``None`` if absent."""
    found = None
    for item in _chain(error):
        if isinstance(item, InputError) or (isinstance(item, ValueError) and _raised_here(item)):
            found = item
        elif _is_distributed_failure(item):
            found = item
    return found


def refusal_message(error: BaseException) -> str:
    """One line for a refusal found by :func:`find_refusal`."""
    text = " ".join(str(error).split()) or type(error).__name__
    if _is_distributed_failure(error):
        first = text.split(" Exception raised from ")[0]
        return (
            f"distributed training stopped on rank {os.environ.get('RANK', '?')}: another rank died or did not "
            f"answer within --ddp_timeout seconds ({first[:300]})"
        )
    return text


def one_line_errors(debug: bool = False) -> bool:
    """Print refusals as one line, without a traceback, when they end the process (``debug``: keep tracebacks).

    Args:
        debug: leave Python's default hook in place, so every error shows its whole traceback.

    Returns:
        whether the one-line hook is installed.
    """
    if as_bool(debug, "debug"):
        sys.excepthook = sys.__excepthook__
        return False
    previous = sys.__excepthook__

    def hook(kind: type[BaseException], error: BaseException, tb: TracebackType | None) -> None:
        refusal = find_refusal(error)
        if refusal is None:
            previous(kind, error, tb)
            return
        sys.stderr.write(f"ERROR: {refusal_message(refusal)}\n")
        sys.stderr.flush()

    sys.excepthook = hook
    return True


def check_options(positive: dict | None = None, non_negative: dict | None = None, integers: Sequence[str] = ()) -> bool:
    """Refuse, in one line naming the option, numeric options out of range, before any data is read.

    Args:
        positive: ``{option: value}`` that must be > 0.
        non_negative: ``{option: value}`` that must be >= 0.
        integers: the options among them that count something (epochs, slices, filters) and must be whole numbers
            (``--epochs 2.5`` ran 3 epochs).

    Returns:
        ``True``.
    """
    for bound, options in ((0, positive or {}), (None, non_negative or {})):
        for name, value in options.items():
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
            whole = ok and (name not in integers or float(value).is_integer())
            if whole and (value > 0 if bound == 0 else value >= 0):
                continue
            kind = "an integer" if name in integers else "a number"
            expected = f"{kind} > 0" if bound == 0 else f"{kind} >= 0"
            raise InputError(f"--{name} {value!r} is out of range; expected {expected}")
    return True


def check_slice_size(slice_size: object, min_size: int) -> bool:
    """Refuse, in one line, a ``--slice_size`` other than two integers, each ``-1`` (as the volumes are) or at least
    the network's ``min_size``: ``32`` failed in a config expression, ``[8, 8]`` and ``[0, 0]`` after every volume
    was cached, and a third value was silently ignored.

    Returns:
        ``True``.
    """
    ok = isinstance(slice_size, (list, tuple)) and len(slice_size) == 2
    ok = ok and all(isinstance(v, int) and not isinstance(v, bool) and (v == -1 or v >= min_size) for v in slice_size)
    if not ok:
        raise InputError(
            f"--slice_size {slice_size!r} is not a slice size; expected [H, W], each -1 (as the volumes are) or an "
            f"integer of at least {min_size} (the network pools 4 times)"
        )
    return True


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def as_bool(value: object, name: str = "option") -> bool:
    """A command-line switch as a bool: the runner (fire) passes ``--resume false`` as the string ``'false'``,
    which Python would take as true.

    Args:
        value: a bool, or one of true/false, yes/no, on/off, 1/0 (any case).
        name: the option, for the message.

    Raises:
        InputError: for anything else, naming the option.
    """
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise InputError(f"--{name} {value!r} is not a switch; expected true or false")


def as_choice(value: object, choices: list[str], name: str = "option") -> str:
    """A command-line option that takes one of a few words, checked before any work.

    Args:
        value: the option's value.
        choices: the words it may take.
        name: the option, for the message.

    Raises:
        InputError: for anything else, naming the option and the words.
    """
    if value not in choices:
        raise InputError(f"--{name} {value!r} is not one of {', '.join(choices)}")
    return str(value)


def check_device(device: object) -> bool:
    """Refuse, in one line before any work, a device this machine cannot run on (``--device cuda`` on a CPU build of
    PyTorch or without a visible GPU, a CUDA index past the visible ones, a name that is not a device).

    Args:
        device: the config's ``device``, a ``torch.device`` or a string such as ``cpu``, ``cuda``, ``cuda:1``.

    Returns:
        ``True``.
    """
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"--device {device!r} is not a device; expected cpu, cuda or cuda:N") from None
    if dev.type != "cuda":
        return True
    if not torch.cuda.is_available():
        why = "this PyTorch is a CPU-only build" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise InputError(f"--device {device}: {why}; use --device cpu, or leave --device out")
    count = torch.cuda.device_count()
    if dev.index is not None and dev.index >= count:
        raise InputError(f"--device {device}: {count} CUDA device(s) visible, so cuda:0 to cuda:{count - 1}")
    return True


def _runner_parameters() -> set[str]:
    """The keyword arguments MONAI's ``run`` takes for itself (not config overrides), and the settings its
    experiment tracking (``--tracking mlflow``) adds to the config (``--tracking_uri``, ``--experiment_name``, ...)."""
    from monai.bundle import ConfigWorkflow
    from monai.bundle.scripts import create_workflow, run
    from monai.bundle.utils import DEFAULT_MLFLOW_SETTINGS

    names = set(DEFAULT_MLFLOW_SETTINGS["configs"])
    for function in (run, create_workflow, ConfigWorkflow.__init__):
        names |= {p.name for p in inspect.signature(function).parameters.values() if p.kind != p.VAR_KEYWORD}
    return names - {"self"}


def _command_line_options(args: Sequence[str]) -> dict[str, object]:
    """``{name: value}`` of the ``--name value``, ``--name=value`` and ``--flag`` options of a command line, as
    python-fire reads them for MONAI's runner (``-`` in a name taken as ``_``)."""
    options: dict[str, object] = {}
    index = 0
    while index < len(args):
        token = args[index]
        index += 1
        if not token.startswith("--") or token == "--":
            continue
        name, has_value, value = token[2:].partition("=")
        if not has_value:
            if index < len(args) and not args[index].startswith("--"):
                value, index = args[index], index + 1
            else:
                value = "true"
        options[name.replace("-", "_")] = value
    return options


def refuse_unknown_options(argv: Sequence[str] | None = None) -> bool:
    """Refuse, in one line, a command-line option that names nothing in the configs, such as ``--epoch 1`` for
    ``--epochs`` or ``--datalists``: MONAI's runner adds any ``--name value`` to the config, where nothing reads it,
    so a misspelled option was silently ignored (a misspelled ``--datalist`` trained on the generated dataset).

    A nested id (``--train#trainer#amp true``) needs its parent (``train#trainer``) only: it may add an argument.
    Acts only in a process started by ``python -m monai.bundle`` (MONAI Label and Python callers have their own
    command lines); options from ``--args_file`` are checked too.

    Args:
        argv: the command line (``sys.argv``).

    Returns:
        ``True``.
    """
    from monai.bundle import ConfigParser

    argv = list(sys.argv if argv is None else argv)
    if not argv or not os.path.normpath(argv[0]).endswith(os.path.join("monai", "bundle", "__main__.py")):
        return True
    options = _command_line_options(argv[1:])
    if "args_file" in options:
        from_file = ConfigParser.load_config_file(str(options["args_file"]))
        options = {**{str(k): v for k, v in from_file.items()}, **options}
    files = options.get("config_file")
    if not isinstance(files, (str, list, tuple)):
        return True  # the runner itself refuses a missing config
    if isinstance(files, str) and files.strip().startswith("["):
        files = ast.literal_eval(files)
    parser = ConfigParser()
    parser.read_config(list(files) if isinstance(files, (list, tuple)) else files)
    config = parser.get()
    runner = _runner_parameters()
    for name in options:
        if name in runner:
            continue
        *parents, last = re.split("::|#", name)  # MONAI's id separators, new and old
        node, known = config, (parents or [last])[0] in config
        for part in parents:
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                known = False
                break
        if not known:
            tops = [k for k in config if not k.startswith("_")]
            close = [] if parents else difflib.get_close_matches(name, tops, n=1)
            hint = f" (did you mean --{close[0]}?)" if close else ""
            raise InputError(f"--{name} is not an option of these configs: nothing would read it{hint}")
    return True
