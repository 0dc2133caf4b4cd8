"""Errors a user sees, and the one way they cross process boundaries.

* :class:`UserError`: a mistake the user can fix (bad option, missing path, unusable input). The
  CLI prints its message on one line and exits with status 2, never with a traceback.
* :class:`ModelLoadError`: a model that cannot be loaded (wrong id, no network, bad path).
* :class:`Skip`: an input that cannot be used (a value, not an exception): skipped and counted.

Work runs in other processes (Ray tasks and actors, DataLoader workers). A UserError raised there
comes back wrapped (``RayTaskError``, Ray Data's ``UserCodeException``, ...): :func:`recover`
finds it in the chain of causes. DataLoader workers, whose errors torch re-raises as text, send
it as a value instead (:class:`CarriedError`), which :func:`recover` also accepts.
"""

from __future__ import annotations

from dataclasses import dataclass


class UserError(Exception):
    """An error caused by user input, reported as one line without a traceback."""


class ModelLoadError(UserError):
    """A model could not be loaded: one line with its name and how to pass a local copy."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM, after the work in progress was put in order: the message says what was
    kept and how to go on (the CLI prints it on one line, exit status 130)."""


@dataclass(frozen=True)
class Skip:
    """An input that cannot be used, with the reason (a short snake_case word)."""

    reason: str
    detail: str = ""


_KINDS = {"UserError": UserError, "ModelLoadError": ModelLoadError}


@dataclass(frozen=True)
class CarriedError:
    """A UserError as plain data (picklable, no traceback), to send from a worker process."""

    kind: str
    message: str

    @classmethod
    def of(cls, exc: UserError) -> "CarriedError":
        kind = type(exc).__name__ if type(exc).__name__ in _KINDS else "UserError"
        return cls(kind, str(exc))

    def error(self) -> UserError:
        return _KINDS.get(self.kind, UserError)(self.message)


def recover(exc: BaseException | CarriedError | None) -> UserError | None:
    """The UserError inside ``exc`` (a wrapper raised by Ray, Ray Data or our own code), or None
    when the failure is not a user error. Walks ``cause`` / ``__cause__`` / ``__context__``."""
    seen: set[int] = set()
    stack: list = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, CarriedError):
            return e.error()
        if isinstance(e, UserError):
            # Ray re-raises a task's error as a class deriving from both RayTaskError and the
            # original type, with a traceback in its text: rebuild the plain error
            cause = getattr(e, "cause", None)
            if isinstance(cause, UserError):
                return type(cause)(*cause.args)
            return e
        stack += [getattr(e, "cause", None), e.__cause__, e.__context__]
    return None


def raise_problems(problems: list[str]) -> None:
    """Raise one UserError listing every problem of a configuration (none: return)."""
    if problems:
        raise UserError("; ".join(problems))
