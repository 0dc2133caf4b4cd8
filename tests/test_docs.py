"""The README and docs/ say only what the code does: the README fits on a page and keeps the two
set-up commands (CI runs the test one), every docs page is linked and every link leads somewhere,
every `synthgen COMMAND --flag` written in them is an option of that command (the truth is the
option contract, :data:`synthgen.commands.COMMANDS`, not --help), and every module
synthgen/ARCHITECTURE.md names exists. The checkers take a text, so each is also shown bad
examples it must catch. Fast: no Ray, no model."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from synthgen.commands import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
ARCHITECTURE = ROOT / "synthgen" / "ARCHITECTURE.md"
README_MAX_BYTES = 10 * 1024
DEMO_COMMAND = ('python3 -m venv .venv && .venv/bin/pip install -e ".[demo]" && '
                '.venv/bin/synthgen run recipes/demo.yaml')
TEST_COMMAND = ('python3 -m venv .venv && .venv/bin/pip install -e ".[test]" && .venv/bin/pip install --no-deps '
                'open-flamingo==2.0.1 && .venv/bin/python -c "import rembg" && .venv/bin/python -m pytest -q')
KEPT_AS_IS = {"fidelity.md"}  # older than the other pages; its first paragraph says what it is

ALWAYS = {"--help", "-h"}     # every command takes them
EXTRA = {"run": {"--set"}}    # a recipe variable: run's, whichever layer defines it
OTHER_TOOLS = {"-m"}          # pytest's marker expression, named alone in contributing.md

FENCE = re.compile(r"^\s*(```|~~~)")
INLINE = re.compile(r"(`+)(.+?)\1", re.S)
# `synthgen COMMAND` (also `python -m synthgen COMMAND`, `.venv/bin/synthgen COMMAND`); an upper-case
# word is a placeholder (`synthgen COMMAND --flag`), not a command
CALL = re.compile(r"(?<![\w.-])synthgen[ \t]+([a-z][a-z0-9_-]*)(?![\w-])")
FLAG = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")
STOP = re.compile(r"\s#|&&|\|\||;|\|")  # a comment, or the next command of a shell line
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
MODULE = re.compile(r"[\w/.]+(\.py|/)")
REPO_PATH = re.compile(r"(?<![\w./{$-])((?:\.ci|[a-z_]+)/[\w./*-]*)")


# --- reading Markdown ---------------------------------------------------------------------------

def split_code(text: str) -> tuple[list[str], str]:
    """``(lines, prose)``: the logical lines of the fenced code blocks (a line ending in a backslash
    continued by the next) and the text outside them."""
    lines, prose, fenced, pending = [], [], False, ""
    for line in text.splitlines():
        if FENCE.match(line):
            fenced, pending = not fenced, ""
            prose.append("")
        elif not fenced:
            prose.append(line)
        elif line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
        else:
            lines.append(pending + line)
            pending = ""
    return lines, "\n".join(prose)


def inline_code(text: str) -> list[str]:
    """The inline code spans outside the fenced blocks of ``text`` (a span may wrap lines)."""
    return [" ".join(m.group(2).split()) for m in INLINE.finditer(split_code(text)[1])]


def code_lines(text: str) -> list[str]:
    """Every piece of code a page shows: fenced lines and inline spans."""
    return split_code(text)[0] + inline_code(text)


# --- command lines and their flags --------------------------------------------------------------

def known_flags(command: str) -> set[str]:
    """The flags ``synthgen COMMAND`` takes, from its option contract."""
    flags = ALWAYS | EXTRA.get(command, set())
    for o in COMMANDS[command].options:
        if o.cli and not o.argument:
            flags |= set(o.spellings) | ({o.off_flag} if o.off_flag else set())
    return flags


def synthgen_calls(line: str) -> list[tuple[str, list[str]]]:
    """``[(command, flags)]`` for each ``synthgen COMMAND ...`` on ``line``; its flags run to a
    comment, the next shell command or the next ``synthgen``."""
    calls = []
    matches = list(CALL.finditer(line))
    for i, m in enumerate(matches):
        rest = line[m.end():matches[i + 1].start() if i + 1 < len(matches) else len(line)]
        stop = STOP.search(rest)
        calls.append((m.group(1), FLAG.findall(rest[:stop.start()] if stop else rest)))
    return calls


def bare_spans(text: str) -> list[tuple[str, str | None]]:
    """Inline spans that name options without ``synthgen`` in front, with the command they belong
    to: ``CMD --flag ...`` (CMD) or ``--flag ...`` (None: any command's)."""
    out = []
    for span in inline_code(text):
        words = span.split()
        if not words or CALL.search(span):
            continue
        if words[0] in COMMANDS:
            out.append((span, words[0]))
        elif FLAG.fullmatch(re.split(r"[=/]", words[0])[0]):
            out.append((span, None))
    return out


def checked_flags(text: str) -> list[str]:
    """The flags the checker looks at in ``text``, in order."""
    return ([f for line in code_lines(text) for _, flags in synthgen_calls(line) for f in flags]
            + [f for span, _ in bare_spans(text) for f in FLAG.findall(span)])


def flag_problems(text: str) -> list[str]:
    """Commands of ``text`` that do not exist, and flags their command does not take."""
    problems = []
    for line in code_lines(text):
        for command, flags in synthgen_calls(line):
            if command not in COMMANDS:
                problems.append(f"no command {command!r}: {line.strip()}")
                continue
            problems += [f"synthgen {command} has no option {f}: {line.strip()}"
                         for f in flags if f not in known_flags(command)]
    every = set().union(*map(known_flags, COMMANDS)) | OTHER_TOOLS
    for span, command in bare_spans(text):
        known, who = (known_flags(command), f"{command} has") if command else (every, "no command has")
        problems += [f"{who} no option {f}: `{span}`" if command else f"{who} option {f}: `{span}`"
                     for f in FLAG.findall(span) if f not in known]
    return problems


# --- links and modules --------------------------------------------------------------------------

def slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*$", split_code(text)[1], re.M)}


def link_problems(page: Path, text: str | None = None) -> list[str]:
    """Relative links of ``page`` (its ``text``) that lead to no file, or to no heading of it."""
    text = page.read_text() if text is None else text
    problems = []
    for target in LINK.findall(split_code(text)[1]):
        if re.match(r"^[a-z][\w+.-]*:", target):  # https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else None
        if dest is not None and not dest.exists():
            problems.append(f"{page.name}: link to {target}: no such file")
        elif anchor and (dest is None or dest.suffix == ".md") and anchor not in anchors(
                text if dest is None else dest.read_text()):
            problems.append(f"{page.name}: link to {target}: no such heading")
    return problems


def module_names(text: str) -> list[str]:
    return [s for s in inline_code(text) if MODULE.fullmatch(s)]


def module_problems(text: str, root: Path = ROOT / "synthgen") -> list[str]:
    """Paths that ``text`` names in backticks (ending in ``.py`` or ``/``) missing under ``root``."""
    return [f"{name}: not in synthgen/" for name in module_names(text)
            if not ((root / name).is_dir() if name.endswith("/") else (root / name).is_file())]


def path_problems(text: str) -> list[str]:
    """Paths into this repository that ``text`` shows in code (their first folder one of the
    repository's or of the package's, e.g. ``benchmarks/compose.py``, ``pin/training/train.py``)
    that exist neither under the repository nor under synthgen/; globs are left alone."""
    tops = {p.name for p in ROOT.iterdir() if p.is_dir()} | {p.name for p in (ROOT / "synthgen").iterdir() if p.is_dir()}
    problems = []
    for line in code_lines(text):
        for name in REPO_PATH.findall(line):
            if name.split("/")[0] in tops and "*" not in name and not any(
                    (base / name).exists() for base in (ROOT, ROOT / "synthgen")):
                problems.append(f"{name}: no such file or folder")
    return problems


# --- the README ---------------------------------------------------------------------------------

def test_the_readme_fits_on_a_page_and_keeps_both_set_up_commands():
    data = README.read_bytes()
    assert len(data) <= README_MAX_BYTES, f"README.md is {len(data)} bytes (at most {README_MAX_BYTES})"
    text = data.decode()
    assert DEMO_COMMAND in text
    assert TEST_COMMAND in text
    assert text.count("python3 -m venv") == 2, "the README gives exactly two set-up commands"


def test_ci_runs_the_readme_test_command():
    assert TEST_COMMAND in (ROOT / ".ci" / "run").read_text().splitlines()


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in LINK.findall(split_code(README.read_text())[1])}
    assert len(DOCS) >= 10, "the manual is in docs/"
    missing = [p.name for p in DOCS if p.resolve() not in linked]
    assert not missing, f"not linked from README.md: {missing}"


@pytest.mark.parametrize("page", [p for p in DOCS if p.name not in KEPT_AS_IS], ids=lambda p: p.name)
def test_each_docs_page_starts_with_a_summary_and_links_back(page):
    lines = [line for line in page.read_text().splitlines() if line.strip()]
    assert lines[0].startswith("# "), f"{page.name}: no title"
    assert "](../README.md)" in "\n".join(lines[1:6]), f"{page.name}: no link back to the README at the top"


# --- links --------------------------------------------------------------------------------------

@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page):
    problems = link_problems(page)
    assert not problems, "\n".join(problems)


def test_the_link_checker_catches_a_dead_link_and_a_missing_heading(tmp_path):
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# Other\n\n## Some heading: --flag\n")
    good = ("# Page\n\nSee [other](other.md), [there](other.md#some-heading---flag), [here](#page), "
            "[web](https://x.org/y.md).\n")
    assert link_problems(page, good) == []
    bad = "See [gone](gone.md), [there](other.md#no-heading), [here](#nowhere).\n```\n[in code](x.md)\n```\n"
    assert len(link_problems(page, bad)) == 3


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_paths_into_the_repository_exist(page):
    problems = path_problems(page.read_text())
    assert not problems, "\n".join(problems)


def test_the_path_checker_catches_a_moved_module():
    text = ("`pin/train.py` moved to `pin/training/train.py`; `synthgen/rundir.py` is gone, "
            "`benchmarks/compose.py` and `tests/test_*.py` are there\n```\npython benchmarks/render.py\n```\n")
    assert path_problems(text) == ["pin/train.py: no such file or folder", "synthgen/rundir.py: no such file or folder"]


# --- command lines ------------------------------------------------------------------------------

@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_command_lines_name_real_commands_and_options(page):
    problems = flag_problems(page.read_text())
    assert not problems, "\n".join(problems)


def test_the_docs_have_command_lines_to_check():
    calls = [c for p in PAGES for line in code_lines(p.read_text()) for c in synthgen_calls(line)]
    assert len(calls) >= 50 and sum(len(f) for _, f in calls) >= 100, "the extraction found too little"
    assert {c for c, _ in calls} >= {"render", "compose", "prepare-backgrounds", "preview", "stats", "export-coco",
                                     "train-pin", "eval-pin", "predict", "import-pin", "export-pin", "run"}
    assert sum(len(checked_flags(p.read_text())) for p in PAGES) >= 300


def test_the_flag_checker_catches_what_it_should():
    good = """
Text with `synthgen compose --objects B --backgrounds G --out s/ -n 10 --keep-qualifiers` inline,
`--a-max` alone, `compose --objects/--backgrounds`, `preview -o` and `benchmarks/compose.py --index`.

```bash
synthgen train-pin shards/ --vlm blip2 \\
    --out runs/pin      # a comment --not-a-flag
torchrun --nproc-per-node 2 -m synthgen train-pin --recipe r.yaml --objects o/ --backgrounds b/
.venv/bin/synthgen run recipes/demo.yaml --set vlm=openflamingo && echo --whatever
synthgen demo --no-train -h
synthgen COMMAND --placeholder
```
"""
    assert flag_problems(good) == []
    for bad, needle in (
            ("`synthgen compose --a-maks 3`", "--a-maks"),
            ("```\nsynthgen compsoe --out x\n```", "compsoe"),
            ("```\nsynthgen train-pin s/ --vlm blip2 \\\n    --bogus 1\n```", "--bogus"),
            ("a span that wraps `synthgen eval-pin runs/pin\n--baseline-kind random` here", "--baseline-kind"),
            ("```\nsynthgen prepare-backgrounds --backgrounds bg/ -o out/\n```", "--backgrounds"),  # positional
            ("`synthgen preview shards/ -x 3`", "-x"),
            ("```\nsynthgen stats s/ && synthgen export-coco s/ --ot dir\n```", "--ot"),
            ("the flag `--keep-qualifier` alone", "--keep-qualifier"),
            ("`eval-pin --a-max 2` (compose's, not eval-pin's)", "--a-max")):
        problems = flag_problems(bad)
        assert len(problems) == 1 and needle in problems[0], (bad, problems)


@pytest.mark.parametrize("page", [p for p in PAGES if checked_flags(p.read_text())], ids=lambda p: p.name)
def test_a_flag_broken_in_a_copy_of_each_page_is_caught(page, tmp_path):
    text = page.read_text()
    flag = checked_flags(text)[0]
    copy = tmp_path / page.name
    copy.write_text(re.sub(rf"{re.escape(flag)}(?![\w-])", f"{flag}x", text))
    problems = flag_problems(copy.read_text())
    assert any(f"{flag}x" in p for p in problems), (page.name, flag, problems)


# --- ARCHITECTURE.md ----------------------------------------------------------------------------

def test_every_module_architecture_names_exists():
    text = ARCHITECTURE.read_text()
    assert len(module_names(text)) >= 40, "ARCHITECTURE.md names the modules by their path under synthgen/"
    problems = module_problems(text)
    assert not problems, "\n".join(problems)


def test_the_module_checker_catches_a_moved_module():
    text = "- `commands/core.py`, the contract; `rundir.py` moved; `storage/`; `nowhere/`; `--flag`.\n"
    assert module_problems(text) == ["rundir.py: not in synthgen/", "nowhere/: not in synthgen/"]
