"""The ``synthgen`` command line: every command of :data:`synthgen.commands.COMMANDS`, made into a
typer command from its option contract (:mod:`.build`), its result printed by :mod:`.present`.

Typer only reads the words; every value then goes through the same :func:`synthgen.commands.build`
as the Python API's, so a command line, a recipe and an API call make the same configuration. The
heavy work is imported when a command runs: ``synthgen --help`` is instant. A
:class:`~synthgen.errors.UserError` ends a command with one line and status 2, and so does a
mistyped command line (an unknown option or command, a missing argument: :class:`_Group`), with
the closest flag or command name when one is close.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import sys
from typing import Callable, TypeVar

import typer
import typer.core

try:  # typer >= 0.29 carries its own click
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover
    from click import exceptions as click_errors

from synthgen._version import __version__
from synthgen.errors import Interrupted, UserError

F = TypeVar("F", bound=Callable)


def _close(word: str, choices) -> str | None:
    """The choice closest to ``word`` (flags compared without their dashes), if one is close."""
    bare = {c.lstrip("-"): c for c in sorted(set(choices))}
    found = difflib.get_close_matches(word.lstrip("-"), list(bare), n=1, cutoff=0.6)
    return bare[found[0]] if found else None


def usage_line(exc) -> str:
    """A click usage error as one line: what was wrong, the closest flag when one is close."""
    ctx = getattr(exc, "ctx", None)
    cmd = getattr(ctx, "command", None)
    name = ctx.command_path if ctx is not None else "synthgen"
    where = name.partition(" ")[2] or name  # compose, not "synthgen compose"
    if isinstance(exc, click_errors.NoSuchOption):
        flags = [f for p in getattr(cmd, "params", ()) for f in (*p.opts, *p.secondary_opts) if f.startswith("-")]
        flags += list(getattr(ctx, "help_option_names", ()))
        hint = _close(exc.option_name, [f for f in flags if f.startswith("--") == exc.option_name.startswith("--")])
        text = f"no such option {exc.option_name}"
    else:
        text = " ".join(exc.format_message().split())
        text = text[:1].lower() + text[1:]
        hint = getattr(exc, "hint", None)
    text = text.rstrip(".")
    tail = f" (did you mean {hint}?)" if hint else f" (`{name} -h` for help)"
    return f"{where}: {text}{tail}" if where != "synthgen" else f"{text}{tail}"


def _stop(signum, frame) -> None:
    import signal

    getattr(signal, "alarm", abs)(0)  # (Ray's C++ failure handler, if it saw the signal first, aborts in 3 s)
    raise KeyboardInterrupt("SIGTERM")


@contextlib.contextmanager
def _sigterm_as_ctrl_c():
    """SIGTERM (how schedulers and ``kill`` stop a job) ends a command as Ctrl-C does: its
    finished work kept, its temporaries removed, one line, status 130 (the default would end the
    process where it stands). Where SIGTERM is not at its default, it is left alone."""
    import signal
    import threading

    mine = threading.current_thread() is threading.main_thread() and \
        signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    if mine:
        signal.signal(signal.SIGTERM, _stop)
    try:
        yield
    finally:
        if mine:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


class _Command(typer.core.TyperCommand):
    """A command whose usage errors know the command (click's parser raises some without it)."""

    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except click_errors.UsageError as exc:
            exc.ctx = exc.ctx or ctx
            raise


class _Group(typer.core.TyperGroup):
    """The ``synthgen`` group: a usage error (click's) is one line on stderr, ``error: ...``, exit
    status 2, with a did-you-mean; never click's box of usage, hint and message."""

    def resolve_command(self, ctx, args):
        if args and not args[0].startswith("-") and self.get_command(ctx, args[0]) is None:
            exc = click_errors.UsageError(f"no such command {args[0]!r}", ctx)
            exc.hint = _close(args[0], self.list_commands(ctx))
            raise exc
        return super().resolve_command(ctx, args)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            with _sigterm_as_ctrl_c():
                code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click_errors.ClickException as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # the help is printed already
                sys.exit(exc.exit_code)
            line = usage_line(exc) if isinstance(exc, click_errors.UsageError) else exc.format_message()
            typer.secho(f"error: {line}", fg=typer.colors.RED, err=True)
            sys.exit(exc.exit_code)
        except typer.Abort:
            typer.secho("aborted", fg=typer.colors.YELLOW, err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=_Group,
    name="synthgen",
    help=(
        "Synthetic grounding data for vision-language models (PIN, CVPR 2024).\n\n"
        "render: text -> object bank;  compose: objects + backgrounds -> WebDataset scene shards;  "
        "train-pin: shards -> PIN on a frozen VLM."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _interrupted(name: str) -> str:
    """What a Ctrl-C leaves, for the command ``name``."""
    from synthgen.commands import COMMANDS

    cmd = COMMANDS.get(name)
    flag = cmd.resume[0] if cmd is not None and cmd.resume else None
    again = f"re-run the same command with {flag} to continue" if flag else "re-run the same command to resume"
    return f"interrupted: finished work is kept; {again}"


def _in_recipe(name: str, exc: UserError, recipe: str | None) -> str:
    """The error's message, with the line of the recipe entry it is about when it is about one
    (the command's recipe section; for ``run``, the section the message names)."""
    message = str(exc)
    if not recipe:
        return message
    from synthgen.commands import COMMANDS
    from synthgen.recipes import locate

    for cmd in COMMANDS.values():
        if cmd.section and (cmd.name == name or (name == "run" and f"`{cmd.section}" in message)):
            return locate(message, recipe, cmd.section, [o for o in cmd.options if o.recipe])
    return message


def user_errors(name: str, fn: F) -> F:
    """Turn :class:`UserError` (and a missing optional dependency) into a one-line message and exit
    status 2; Ctrl-C into one line and status 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            typer.secho(f"error: {_in_recipe(name, exc, kwargs.get('recipe'))}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None
        except ModuleNotFoundError as exc:  # an optional dependency the core install leaves out
            from synthgen.extras import missing_extra

            error = missing_extra(exc, name)
            if error is None:
                raise
            typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt as exc:
            typer.secho(f"interrupted: {exc}" if isinstance(exc, Interrupted) else _interrupted(name),
                        fg=typer.colors.YELLOW, err=True)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"synthgen {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    pass


def _register() -> None:
    from synthgen.cli.build import typer_command
    from synthgen.cli.common import readable_help
    from synthgen.commands import COMMANDS

    readable_help()
    for name, cmd in COMMANDS.items():
        bare = not any(o.required or o.argument for o in cmd.options) and cmd.section is None  # (demo)
        app.command(name, cls=_Command, help=cmd.help, no_args_is_help=not bare)(
            user_errors(name, typer_command(cmd)))


_register()


def main(argv: list[str] | None = None) -> None:
    app(args=argv if argv is not None else sys.argv[1:], prog_name="synthgen")
