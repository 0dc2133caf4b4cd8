"""A recipe's mistakes point at their line (issue 19, "first hour"): an unknown key names the
closest one and the line of the YAML file it is on, so does a value of the wrong kind, and a file
that is not YAML is one line with its line and column. Through the real command line:
``synthgen compose --recipe FILE`` and ``synthgen run FILE``."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.hostile.conftest import one_line_error


def _compose(recipe, tmp_path):
    # the inputs need not exist: the recipe is read (and refused) before anything else
    return subprocess.run([sys.executable, "-m", "synthgen", "compose", "--recipe", str(recipe), "--objects",
                           str(tmp_path / "bank"), "--backgrounds", str(tmp_path / "bg"), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)


def test_an_unknown_key_names_the_closest_and_its_line(tmp_path):
    rec = tmp_path / "r.yaml"
    rec.write_text("# my recipe\ncompose:\n  num_samples: 5\n\n  a_mx: 2\n  seed: 3\n")
    line = one_line_error(_compose(rec, tmp_path), f"recipe {rec}:5: unknown option(s) in `compose:`: a_mx",
                          "(did you mean a_max?)")
    assert not (tmp_path / "o").exists()
    assert line.startswith("error: recipe ")


def test_a_value_of_the_wrong_kind_names_its_line(tmp_path):
    rec = tmp_path / "r.yaml"
    rec.write_text("train:\n  steps: 3\ncompose:\n  num_samples: 5\n  s_min: [0.5, 0.4]\n  a_max: three\n")
    one_line_error(_compose(rec, tmp_path), f"recipe {rec}:6: `compose.a_max` must be an integer (got 'three')")
    rec.write_text("compose: {num_samples: 5,\n  o_max: }\n")  # a flow mapping: the key's own line
    one_line_error(_compose(rec, tmp_path), f"recipe {rec}:2: `compose.o_max` has no value")


def test_an_error_that_is_not_the_recipes_gets_no_line(tmp_path):
    rec = tmp_path / "r.yaml"
    rec.write_text("compose:\n  num_samples: 5\n")
    r = subprocess.run([sys.executable, "-m", "synthgen", "compose", "--recipe", str(rec), "--objects",
                        str(tmp_path / "bank"), "--backgrounds", str(tmp_path / "bg"), "--out", str(tmp_path / "o"),
                        "--a-max", "x"], capture_output=True, text=True, timeout=120)
    line = one_line_error(r, "--a-max must be an integer")
    assert f"{rec}:" not in line


def test_yaml_that_does_not_parse_is_one_line_with_line_and_column(tmp_path):
    rec = tmp_path / "r.yaml"
    rec.write_text("compose:\n  num_samples: 5\n a_max: [\n")
    one_line_error(_compose(rec, tmp_path), f"recipe {rec}:3:2: not valid YAML: ")
    rec.write_text("compose:\n  s_min: [0.5, 0.4\n")
    one_line_error(_compose(rec, tmp_path), f"recipe {rec}:3:1: not valid YAML: expected ',' or ']'")


def test_run_points_at_the_line_of_the_section_the_step_reads(tmp_path):
    rec = tmp_path / "r.yaml"
    rec.write_text("compose:\n  num_samples: 5\n  same_category: 0.5\n"
                   "run:\n  vars:\n    out: " + str(tmp_path / "out") + "\n  steps:\n"
                   "    - compose: {objects: bank, backgrounds: bg, out: '{out}/scenes'}\n")
    r = subprocess.run([sys.executable, "-m", "synthgen", "run", str(rec), "--dry-run"], capture_output=True,
                       text=True, timeout=120)
    last = r.stderr.strip().splitlines()[-1]  # (after the line naming the plan)
    assert r.returncode == 2 and "Traceback" not in r.stderr and last.startswith("error: "), r.stderr
    assert "step 1 (compose)" in last and "(did you mean same_category_p?)" in last
    assert f"recipe {rec}:3: unknown option(s) in `compose:`: same_category " in last
    r = subprocess.run([sys.executable, "-m", "synthgen", "run", str(tmp_path / "missing.yaml")],
                       capture_output=True, text=True, timeout=120)
    one_line_error(r, "recipe not found")


@pytest.mark.parametrize("body,needle", [
    # a mistyped key of `run:` itself
    ("run:\n  vars:\n    out: OUT\n  setps:\n    - compose: {out: x}\n",
     ":4: unknown key(s) in `run:`: setps (did you mean steps?) (known: vars, env, steps, message)"),
    # a mistyped option of a step: the line of the key, the closest option
    ("run:\n  vars:\n    out: OUT\n  steps:\n    - demo-data: {out: '{out}'}\n    - compose:\n"
     "        objects: b\n        num-sample: 3\n",
     ":8: step 2 (compose): compose has no option or argument 'num_sample' (did you mean num_samples?)"),
    # a mistyped command: the line of the step
    ("run:\n  vars:\n    out: OUT\n  steps:\n    - compse: {out: x}\n",
     ":5: step 1 (compse): not a synthgen command that a step can run (did you mean compose?)"),
])
def test_run_section_mistakes_name_their_line_and_the_closest_word(tmp_path, body, needle):
    rec = tmp_path / "r.yaml"
    rec.write_text(body.replace("OUT", str(tmp_path / "out")))
    r = subprocess.run([sys.executable, "-m", "synthgen", "run", str(rec), "--dry-run"], capture_output=True,
                       text=True, timeout=120)
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert last.startswith(f"error: recipe {rec}") and needle in last, last


def test_the_python_api_names_the_line_too(tmp_path):
    import synthgen
    from synthgen.errors import UserError

    rec = tmp_path / "r.yaml"
    rec.write_text("compose:\n  num_samples: 5\n  a_mx: 3\n")
    with pytest.raises(UserError, match=rf"^recipe {rec}:3: unknown option\(s\) in `compose:`: a_mx \(did you mean a_max\?\)"):
        synthgen.compose("bank", "bg", "out", recipe=str(rec))
    rec.write_text("compose:\n  num_samples: 5\n  a_max: three\n")
    with pytest.raises(UserError, match=rf"^recipe {rec}:3: `compose.a_max` must be an integer"):
        synthgen.compose("bank", "bg", "out", recipe=str(rec))
