"""Checks the `emoverse` command makes before a Trainer run starts, and its one-line config errors.

* A multi-node recipe (`trainer.num_nodes` > 1) needs a launcher that started its processes:
  torchrun (`WORLD_SIZE`) or SLURM (`SLURM_NTASKS`). Started without one, Lightning waits for
  peers that never come (`MEMBER: 1/2` and no further message), so the run is refused instead.
* jsonargparse reports a wrong key after the whole usage text, as a nested multi-line message;
  `config_error_line` names the key and what was wrong in one line.
* Any other error prints as one line (`one_line`): the outermost message of the exception chain that
  names a file, record, member or config key of its own; a library's low-level cause (PIL's
  "cannot identify image file <_io.BytesIO ...>", tarfile's "unexpected end of data") names none.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any


class UserError(Exception):
    """A mistake in the command line or config, reported as one line (its own message, never its cause's)."""


class LaunchError(ValueError):
    """A Trainer run that cannot start as configured (reported as one line)."""


def check_world_size(num_nodes: int, devices: Any, env: Mapping[str, str] | None = None) -> None:
    """Refuse a multi-node run that no launcher started, or one whose launcher started a different count.

    Args:
        num_nodes: `trainer.num_nodes`.
        devices: `trainer.devices` (an int, a list of device ids, or a string such as "auto").
        env: the environment (default `os.environ`).

    Raises:
        LaunchError: naming the settings, what the environment says, and how to launch.
    """
    if not isinstance(num_nodes, int) or num_nodes <= 1:
        return
    env = os.environ if env is None else env
    per_node = len(devices) if isinstance(devices, (list, tuple)) else devices
    if isinstance(per_node, str) and per_node.isdigit():
        per_node = int(per_node)
    expected = num_nodes * per_node if isinstance(per_node, int) and per_node > 0 else None
    launcher = next(((name, env[name]) for name in ("WORLD_SIZE", "SLURM_NTASKS") if env.get(name)), None)
    settings = f"trainer.num_nodes={num_nodes} x trainer.devices={devices!r}"
    if launcher is None:
        per = per_node if expected else "N"
        raise LaunchError(
            f"{settings} needs {expected or 'one process per device on every node'} processes started by a "
            f"launcher, but neither WORLD_SIZE (torchrun) nor SLURM_NTASKS (srun) is set, so it would wait for "
            f"its peers forever. Launch on every node with `torchrun --nnodes {num_nodes} --nproc-per-node {per} "
            f"--rdzv-endpoint HOST:PORT -m emoverse.cli fit ...`, or `srun emoverse fit ...` in an sbatch job with "
            f"--nodes={num_nodes} --ntasks-per-node={per}; on one machine pass --trainer.num_nodes 1")
    name, value = launcher
    if expected is not None and value.isdigit() and int(value) != expected:
        raise LaunchError(f"{settings} = {expected} processes, but {name}={value}: make trainer.num_nodes and "
                          "trainer.devices match the launcher's --nnodes / --nproc-per-node (torchrun) or "
                          "--nodes / --ntasks-per-node (SLURM)")


_OPTION = re.compile(r"Option '([^']+)' is not accepted")
_KEY = re.compile(r'Parser key "([^"]+)"')
_EXPECTED = re.compile(r"Expected a <class '([^']+)'>\. Got value: (.*)")
_CLASS = re.compile(r"Problem with given class_path '([^']+)'")


def config_error_line(message: str) -> str:
    """One line naming the wrong key of a jsonargparse error message (`model.init_args.lora_rr: not an
    argument of emoverse.EmoVerseModule`), or the message's first line when it has no such shape."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if not lines:
        return "invalid configuration"
    keys = [k for line in lines for k in _KEY.findall(line)]
    cls = next((m.group(1) for line in lines if (m := _CLASS.search(line))), None)
    prefix = (keys[0] + (".init_args" if cls else "")) if keys else ""
    option = next((m.group(1) for line in lines if (m := _OPTION.search(line))), None)
    if option is not None:
        where = f"{prefix}.{option}" if prefix else option
        return f"{where}: not an argument of {cls}" if cls else f"{where}: not an accepted key"
    expected = next((m for line in lines if (m := _EXPECTED.search(line))), None)
    if expected is not None and keys:
        where = ".".join([prefix, *keys[1:]]) if cls else ".".join(keys)
        return f"{where}: expected {expected.group(1)}, got {expected.group(2)}"
    return lines[0].rstrip(":") + (f" ({lines[1]})" if len(lines) > 1 and lines[0].endswith(":") else "")


_PATH = re.compile(r"[^\s'\"()\[\]]*\w/[^\s'\"()\[\],;]+"
                   r"|\b[\w-]+\.(?:tar|json|jsonl|ya?ml|csv|ckpt|safetensors|jpe?g|png|flac|wav|mp4|avi|pt|bin|html)\b")
_ITEM = re.compile(r"\b(?:records?|members?|shards?|frames?|keys?|fields?) '?[\w.-]+")
_CONFIG_KEY = re.compile(r"\b(?:model|data|trainer|curriculum|optimizer|lr_scheduler|ckpt_path)(?:\.\w+)+")
_WORKER_TRACEBACK = "Original Traceback (most recent call last):"


def names_of(message: str) -> set[str]:
    """What `message` names: file paths, records/members/shards/frames/fields with their key, config keys
    as the CLI spells them (`model.init_args.lr`)."""
    return {m.group() for pattern in (_PATH, _ITEM, _CONFIG_KEY) for m in pattern.finditer(message)}


def one_line(err: BaseException, stop: tuple[type[BaseException], ...] = ()) -> str:
    """One line for an error: the outermost message in its `__cause__` chain whose first line names something
    (`names_of`) the messages below it do not (a wrapper that only repeats its cause's message, or dumps the
    value it was given on later lines, names nothing of its own); the innermost message when none does. An
    exception of a `stop` type ends the walk (it is the message).

    The type is shown for exceptions that are not ValueError, KeyError, TypeError or FileNotFoundError (the
    ones whose messages say what was expected), and for any when the message is empty.
    """
    chain = [err]
    while chain[-1].__cause__ is not None and str(chain[-1].__cause__) and not isinstance(chain[-1], stop):
        chain.append(chain[-1].__cause__)
    texts = [_text(e) for e in chain]
    below: set[str] = set()
    owned = []
    for link in reversed(chain):  # innermost first: what each adds to the names below it
        # the first line is the exception's own statement; a wrapper's later lines quote its cause or dump the
        # value it was given (jsonargparse's "Given value: {...}"), which names nothing of its own
        owned.append(bool(names_of(_first_line(link)) - below))
        below |= names_of(_message(link))
    owned.reverse()
    pick = next((i for i, own in enumerate(owned) if own), len(chain) - 1)
    chosen, text = chain[pick], texts[pick]
    plain = isinstance(chosen, (ValueError, KeyError, TypeError, FileNotFoundError, *stop))
    return text if plain and text else f"{type(chosen).__name__}: {text}"


def _first_line(err: BaseException) -> str:
    lines = [line for line in _message(err).splitlines() if line.strip()]
    return lines[0] if lines else ""


def _message(err: BaseException) -> str:
    message = str(err.args[0]) if isinstance(err, KeyError) and len(err.args) == 1 else str(err)
    if _WORKER_TRACEBACK in message:
        lines = [line for line in message.splitlines() if line.strip()]
        message = lines[-1] if lines else message
    return message


def _text(err: BaseException) -> str:
    """The exception's message on one line (a KeyError without its repr quotes; a DataLoader worker's
    re-raised error as its original last traceback line)."""
    return " ".join(_message(err).split())
