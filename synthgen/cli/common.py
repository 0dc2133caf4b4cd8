"""Help in plain words for every command (applied once, when the CLI is imported)."""

from __future__ import annotations

_TYPE_NAMES = {"int": "INT", "float": "FLOAT", "str": "TEXT", "path": "PATH", "bool": "BOOL",
               "int range": "INT", "float range": "FLOAT", "file": "FILE", "directory": "DIR"}


def readable_help() -> None:
    """Help in plain words: a value's metavar (``INT``, ``PATH``, ``a|b``, or the option's own),
    none for a switch (typer prints ``<bool>``), and ``RUN IMAGE TEXT`` in the usage line
    (typer prints ``{RUN}``). Applied once when the CLI is imported; tests/cli/test_grammar.py
    checks every command's help."""
    try:
        from typer import core
    except ImportError:  # pragma: no cover
        return

    plain = core.TyperOption.display_type  # typer's own label: <int>, <path>, a|b, list[str] ...

    def option_type(self, ctx):
        if self.metavar is not None:
            return self.metavar
        if getattr(self, "is_flag", False) and not getattr(self, "count", False):
            return None
        label = str(plain(self, ctx))
        inner = label[1:-1] if label.startswith("<") and label.endswith(">") else label
        inner = inner[5:-1] if inner.startswith("list[") and inner.endswith("]") else inner
        return _TYPE_NAMES.get(inner, inner.upper() if inner.isidentifier() else inner)

    def argument_usage(self):
        name = self.metavar if self.metavar is not None else self.name.upper()
        if not self.required:
            name = f"[{name}]"
        return name + ("..." if self.nargs != 1 else "")

    if hasattr(core, "TyperOption") and hasattr(core.TyperOption, "display_type_rich"):
        core.TyperOption.display_type_rich = option_type
    if hasattr(core, "TyperArgument"):
        if hasattr(core.TyperArgument, "_usage_display_name"):
            core.TyperArgument._usage_display_name = argument_usage
        core.TyperArgument.display_type_rich = lambda self, ctx: None  # the name is the metavar
