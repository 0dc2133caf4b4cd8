"""One option contract per command: the command line, the Python API, recipes and `synthgen run`
steps build a command's configuration through the same function, so the same options give equal
configurations whichever way they come in."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from synthgen import api
from synthgen.cli.build import call_of
from synthgen.commands import COMMANDS, Option, resolve
from synthgen.commands.compose import scene_params
from synthgen.errors import UserError

API_NAME = {command: name for name, (command, _, _) in api.FUNCTIONS.items()}

# values a command's build checks (one eval set, two area bounds, a known VLM); the rest are drawn
FIXED = {
    "eval-pin": {"coco_json": "set.json", "voc": None, "refcoco": None, "images": "images", "split": None,
                 "article": "a", "names": "raw", "crowd": "skip", "gt_boxes": "exact", "parse": "lenient",
                 "refcoco_sentences": "all", "baseline": "in-context", "scenes": None, "tasks": "name"},
    "render": {"area": (0.1, 0.8), "categories": "voc"},
    "train-pin": {"vlm": "openflamingo", "vlm_options": {"cross_attn_every": "2", "lm": "lm-dir"},
                  "tasks": "name=1,count=0.5"},
    "import-pin": {"vlm": "qwen2_5_vl", "vlm_options": {"canvas": "112"}},
    "prefetch": {"what": ("render", "blip2"), "model": {"blip2": "org/other"}},
}


def _value(o: Option, i: int):
    """A value of ``o``'s kind other than its default, in the API's (Python) form."""
    kind = o.kind
    if kind == "bool":
        return not bool(o.default)
    if kind == "int":
        return (o.default or 0) + 3 + i
    if kind == "float":
        return round((o.default or 0.0) + 0.125 * (i + 1), 6)
    if kind == "floats":
        return (0.25, 0.5 + i / 100)
    if kind == "ints":
        return (8, 16 + i)
    if kind == "strs":
        return (f"a{i}", f"b{i}")
    if kind == "pairs":
        return {f"k{i}": f"v{i}"}
    if kind == "path":
        return Path(f"path-{i}")
    return f"{o.name}-{i}"


def _text(o: Option, value) -> list[str]:
    """``value`` as typed on the command line (words after the flag, or the flag itself)."""
    if o.kind == "bool":
        return [o.flag] if value else [o.off_flag] if o.off_flag else []
    if o.kind == "pairs":
        return [w for k, v in value.items() for w in (o.flag, f"{k}={v}")] if not o.argument else []
    if isinstance(value, tuple):
        if o.multiple:
            return [w for v in value for w in ([o.flag, str(v)] if not o.argument else [str(v)])]
        value = ",".join(str(v) for v in value)
    return [str(value)] if o.argument else [o.flag, str(value)]


def _options(name: str, drop: frozenset[str] = frozenset()) -> tuple[list[str], dict]:
    """A command line and the API keywords that say the same: every option of the command given
    (but those in ``drop``)."""
    cmd = COMMANDS[name]
    fixed = FIXED.get(name, {})
    kwargs, argv, args = {}, [], []
    for i, o in enumerate(cmd.options):
        recipe = o.name == "recipe" and not o.argument  # (given on its own by the recipe test)
        if not (o.cli and o.api) or o.name in drop or recipe or (o.kind == "bool" and o.default and not o.off_flag):
            continue
        value = fixed[o.name] if o.name in fixed else _value(o, i)
        if value is None:
            continue
        kwargs[o.name] = value
        words = _text(o, value) if o.kind != "names" else [str(value)] if o.argument else [o.flag, str(value)]
        (args if o.argument else argv).extend(words)
    return args + argv, kwargs


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_the_command_line_and_the_api_build_equal_configurations(name):
    argv, kwargs = _options(name)
    from_cli = call_of(COMMANDS[name], argv)
    from_api = getattr(api, API_NAME[name]).call(**kwargs)
    assert from_cli == from_api
    assert from_cli.command == name


@pytest.mark.parametrize("name", sorted(n for n, c in COMMANDS.items() if c.section))
def test_a_recipe_gives_the_same_configuration_to_both_and_what_is_given_wins(name, tmp_path):
    cmd = COMMANDS[name]
    settable = [o for o in cmd.options if o.recipe and o.kind != "names" and o.name not in FIXED.get(name, {})]
    assert len(settable) >= 5
    section = {}
    for i, o in enumerate(settable, 50):
        v = _value(o, i)
        section[o.name] = list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({cmd.section: section}))
    given, from_recipe = settable[0], settable[1:]
    argv, kwargs = _options(name, frozenset(o.name for o in from_recipe))
    from_cli = call_of(cmd, argv + ["--recipe", str(recipe)])
    from_api = getattr(api, API_NAME[name]).call(**kwargs, recipe=recipe)
    assert from_cli == from_api
    values = resolve(cmd, {**kwargs, "recipe": recipe})
    assert values[given.name] == given.convert(kwargs[given.name]) != given.convert(section[given.name])
    for o in from_recipe:
        assert values[o.name] == o.convert(section[o.name]), o.name  # the recipe fills what was not given


def test_every_option_is_written_once_with_a_help_and_one_meaning_per_flag():
    for name, cmd in COMMANDS.items():
        names = [o.name for o in cmd.options]
        assert len(names) == len(set(names)), name
        flags = [f for o in cmd.options if o.cli for f in (*o.spellings, o.off_flag) if f and not o.argument]
        assert len(flags) == len(set(flags)), (name, flags)
        for o in cmd.options:
            assert o.help.strip(), (name, o.name)
            if o.recipe:
                assert cmd.section is not None, (name, o.name)


def test_option_kinds_read_text_yaml_and_python_alike():
    o = COMMANDS["compose"].option("s_min")
    assert o.convert("0.3,0.2") == o.convert([0.3, 0.2]) == o.convert((0.3, 0.2)) == (0.3, 0.2)
    assert COMMANDS["compose"].option("masks").convert("no") is False
    assert COMMANDS["compose"].option("a_max").convert("4") == COMMANDS["compose"].option("a_max").convert(4) == 4
    pairs = COMMANDS["train-pin"].option("vlm_options")
    assert pairs.convert(["lm=/m", "cross-attn-every=2"]) == pairs.convert({"lm": "/m", "cross_attn_every": "2"})
    for option, bad, word in (("a_max", "three", "an integer"), ("a_max", 2.5, "an integer"),
                              ("o_max", "x", "a number"), ("masks", "maybe", "true or false"),
                              ("s_min", "a,b", "comma-separated numbers")):
        with pytest.raises(UserError, match=word):
            COMMANDS["compose"].option(option).convert(bad)
    with pytest.raises(UserError, match="takes a local path, not the URL s3://b/run"):
        COMMANDS["export-pin"].option("run").convert("s3://b/run")


def test_unknown_options_are_one_line_with_a_suggestion(tmp_path):
    with pytest.raises(UserError, match=r"compose: unknown option\(s\) same_category \(did you mean same_category_p\?\)"):
        resolve(COMMANDS["compose"], {"same_category": 0.5})
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  stepz: 3\n")
    with pytest.raises(UserError, match=r"unknown option\(s\) in `train:`: stepz \(did you mean steps\?\)"):
        resolve(COMMANDS["train-pin"], {"recipe": recipe, "shards": "s"})
    with pytest.raises(UserError, match=r"--num-samples is required \(or `compose.num_samples` in the recipe\)"):
        resolve(COMMANDS["compose"], {"objects": "o", "backgrounds": "b", "out": "x"})


def test_the_compose_section_means_the_same_to_compose_and_to_an_on_the_fly_train_pin(tmp_path):
    """Every key `synthgen compose` accepts in a recipe is accepted when train-pin composes on the fly
    (the shard-only ones do not apply there); the scene settings are equal."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"compose": {"num_samples": 100, "samples_per_shard": 10,
                                                  "prepare_backgrounds": True, "a_max": 2, "s_min": [0.4, 0.3],
                                                  "o_max": 0.2, "referral_grammar": "authors", "seed": 4}}))
    job = api.compose.call("objects", "bg", "out", recipe=recipe).config
    train = api.train_pin.call(objects="objects", backgrounds="bg", recipe=recipe).config
    assert scene_params(train.compose) == job.params == scene_params(recipe=recipe) == api.compose_params(recipe=recipe)
    assert job.prepare_backgrounds and job.num_samples == 100
    assert dataclasses.replace(job.params, seed=0) != job.params  # (the recipe's seed is there)
