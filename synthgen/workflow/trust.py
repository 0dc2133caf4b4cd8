"""What a shared recipe may make ``synthgen run`` execute without the user's say-so (pure).

Recipes are shared like configs, so a recipe alone must not run arbitrary programs: a step's
``launcher`` must be a known distributed launcher that runs ``python -m synthgen ...``, and the
``run.env`` section may not set the variables that decide which code a process loads. Both are
allowed when the user passes ``synthgen run --allow-launcher``.
"""

from __future__ import annotations

import re
import shlex

from synthgen.errors import UserError

# launchers that run the given python module on every rank/node (their program comes after them)
KNOWN_LAUNCHERS = ("torchrun", "python -m torch.distributed.run", "accelerate launch", "srun", "mpirun", "mpiexec")
# flags of those launchers that run something else than python (torchrun --no-python)
_OTHER_PROGRAM = {"--no-python", "--no_python", "-c", "--no_python_exec"}
_PYTHON = re.compile(r"^(.*/)?python(\d+(\.\d+)?)?$")
# variables that change which code or library a process loads
GUARDED_ENV = ("LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP",
               "PYTHONUSERBASE", "PYTHONEXECUTABLE", "PATH", "BASH_ENV", "ENV", "PERL5LIB", "NODE_OPTIONS")
ALLOW = "--allow-launcher"


def launcher_problem(launcher: str) -> str | None:
    """Why ``launcher`` is not a known distributed launcher of ``python -m synthgen``, or None.

    ``torchrun ...``, ``python -m torch.distributed.run ...`` and ``accelerate launch ...`` take
    the module themselves; ``srun ...`` / ``mpirun ...`` / ``mpiexec ...`` must end with the python
    interpreter that runs it (``srun -N 2 python``)."""
    try:
        words = shlex.split(launcher)
    except ValueError as exc:
        return f"it is not a command line ({exc})"
    if not words:
        return "it is empty"
    head = " ".join(["python" if _PYTHON.match(words[0]) else words[0], *words[1:3]])
    known = next((k for k in KNOWN_LAUNCHERS if (head + " ").startswith(k + " ")), None)
    if known is None and not _PYTHON.match(words[0]):
        return f"it is not one of the known launchers ({', '.join(KNOWN_LAUNCHERS)})"
    if any(w in _OTHER_PROGRAM or w.startswith(("--no-python=", "--no_python=")) for w in words):
        return "it runs a program other than python"
    if known is None:
        return f"it is not one of the known launchers ({', '.join(KNOWN_LAUNCHERS)})"
    if known in ("srun", "mpirun", "mpiexec") and not _PYTHON.match(words[-1]):
        return f"{known} must end with the python that runs synthgen (e.g. \"{known} -n 2 python\")"
    return None


def check_trust(env: dict[str, str], launchers: list[tuple[str, str]], where: str, allow: bool) -> None:
    """Refuse, before any step runs, what only the user may allow: guarded ``run.env``
    variables and unknown launchers (``launchers``: ``(step, launcher)``)."""
    if allow:
        return
    guarded = sorted(k for k in env if k in GUARDED_ENV or k.startswith("DYLD_"))
    if guarded:
        raise UserError(f"{where}: `run.env` sets {', '.join(guarded)}, which decide(s) what code every step loads; "
                        f"a recipe may do that only when you pass {ALLOW}")
    for step, launcher in launchers:
        why = launcher_problem(launcher)
        if why:
            raise UserError(f"{where}: {step}: launcher {launcher!r} is refused: {why}. Pass {ALLOW} to run it "
                            "(only for a recipe you trust)")
