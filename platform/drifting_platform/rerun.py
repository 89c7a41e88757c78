"""The command line that continues an interrupted run or sweep, as the user can type it.

    rerun_command(drop=("--no-resume",))          # `train` / `pretrain`: the same command again
    rerun_command(add=("--resume",))              # `sweep`: the same command plus --resume
    rerun_command(argv, add=("--resume",), script=True)   # `python experiments/ablate_*.py ...`

The program is kept as it was started: `python -m drifting_platform.cli ...` stays so; an
installed script becomes its bare name when that is what PATH finds, else the path as typed;
a Python script is run by this interpreter (its bare name when PATH finds the same one).
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from typing import Iterable, Optional, Sequence

__all__ = ["rerun_command"]


def _short(path: str) -> str:
    """`path` as typed, or its bare name when PATH finds that very file."""
    name = os.path.basename(path)
    found = shutil.which(name)
    if found and os.path.exists(path) and os.path.samefile(found, path):
        return name
    return path


def rerun_command(argv: Optional[Sequence[str]] = None, *, drop: Iterable[str] = (), add: Iterable[str] = (), script: bool = False) -> str:
    """`argv` (default: this process's command line) without the words in `drop`, with the
    words in `add` appended when missing, quoted for a POSIX shell."""
    if argv is None:
        orig = list(getattr(sys, "orig_argv", []))
        if "-m" in orig[:-1]:  # python -m drifting_platform.cli ...
            i = orig.index("-m")
            prog, rest = orig[: i + 2], list(sys.argv[1:])
        else:
            prog, rest = None, list(sys.argv[1:])
        argv = [sys.argv[0], *rest]
    else:
        prog, rest = None, list(argv[1:])
    if prog is None:
        prog = [_short(sys.executable), argv[0]] if script else [_short(argv[0])]
    dropped = set(drop)
    words = [w for w in rest if w not in dropped]
    words += [w for w in add if w not in words]
    return shlex.join([*prog, *words])
