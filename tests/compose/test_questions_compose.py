"""compose --tasks: the paper's tasks keep today's records byte for byte; with more tasks the
records carry questions (checked by test_questions' checker) that the pure module derives again
from the record, and every reader of scene shards takes them."""

from __future__ import annotations

import json
from collections import Counter

from synthgen.compose.questions import TASKS, scene_questions
from synthgen.schema import SCENE_SCHEMA, SCENE_SCHEMA_2, SceneRecord

from .test_questions import check

# --- compose --tasks -------------------------------------------------------------------------

def _composers(bank, backgrounds, **kw):
    from synthgen.bank.reader import ObjectBank
    from synthgen.compose.backgrounds import list_backgrounds
    from synthgen.compose.config import ComposeParams
    from synthgen.compose.scene import Composer

    bank_, bgs = ObjectBank.open(bank), list_backgrounds(str(backgrounds)).items
    return lambda **more: Composer(ComposeParams(**{**kw, **more}), bank_, bgs)


def test_the_papers_tasks_keep_todays_records(bank, backgrounds):
    from synthgen.compose.config import ComposeParams

    make = _composers(bank, backgrounds, same_category_p=0.7, masks=True)
    plain, named = make(), make(tasks=("name", "referral"))
    for k in range(25):
        a, b = plain.scene(k).encode(95), named.scene(k).encode(95)
        assert a == b
        d = json.loads(a["json"])
        assert d["schema"] == SCENE_SCHEMA and not {"negatives", "questions"} & set(d)
        assert not {"colors", "point"} & set(d["objects"][0])
    # and the run's recorded settings are those of earlier versions
    assert "tasks" not in ComposeParams().to_dict() and "tasks" not in ComposeParams(tasks=("referral",)).to_dict()
    d = ComposeParams(tasks=("name", "count")).to_dict()
    assert d["tasks"] == ("name", "count") and ComposeParams.from_dict(json.loads(json.dumps(d))).tasks == ("name", "count")
    assert any("--tasks: unknown task 'colour' (the tasks: name, referral" in p
               for p in ComposeParams(tasks=("colour",)).problems())


def test_composed_questions_are_recorded_checked_and_derivable(bank, backgrounds):
    make = _composers(bank, backgrounds, same_category_p=0.7, masks=True)
    plain, asked = make(), make(tasks=TASKS)
    seen = Counter()
    for k in range(40):
        a, b = plain.scene(k), asked.scene(k)
        assert a.encode(95)["jpg"] == b.encode(95)["jpg"] and (a.mask == b.mask).all()  # the same scene
        rec = SceneRecord.from_json(b.record.to_json())
        assert json.loads(b.record.to_json())["schema"] == SCENE_SCHEMA_2
        assert all(o.colors is not None and o.point is not None for o in rec.objects)
        # the questions are those the pure module derives from the record at training time
        bare = SceneRecord(**{**rec.__dict__, "questions": None})
        assert list(rec.questions) == scene_questions(bare, TASKS)
        for q in rec.questions:
            seen[q["task"]] += 1
            check(q, rec, b.mask)
        assert {"text": rec.prompt, "answer": rec.answer} in [{"text": q["text"], "answer": q["answer"]}
                                                              for q in rec.questions]
        ma = json.loads(a.record.to_json())
        mb = json.loads(b.record.to_json())
        assert {k2: v for k2, v in mb.items() if k2 not in ("schema", "negatives", "questions", "objects")} == \
            {k2: v for k2, v in ma.items() if k2 not in ("schema", "objects")}
    assert {"name", "all", "count", "region", "point", "absent"} <= set(seen), seen
    # only the tasks asked for are written
    one = make(tasks=("count",)).scene(3).record
    assert {q["task"] for q in one.questions} == {"count"}


def test_compose_with_tasks_writes_shards_every_reader_takes(bank, backgrounds, tmp_path):
    import tarfile

    from synthgen.compose.config import ComposeParams
    from synthgen.compose.export import export_coco
    from synthgen.compose.inspection import contact_sheet
    from synthgen.compose.run import ComposeJob, run_compose
    from synthgen.compose.stats import collect_stats

    def compose(out, **kw):
        run_compose(ComposeJob(objects=str(bank), backgrounds=str(backgrounds), out=str(out), num_samples=8,
                               samples_per_shard=4, params=ComposeParams(same_category_p=0.7, masks=True, **kw)),
                    executor="serial", progress=False)
        return out

    asked, plain = compose(tmp_path / "asked", tasks=TASKS), compose(tmp_path / "plain")
    recs = []
    for t in sorted(asked.glob("scenes-*.tar")):
        with tarfile.open(t) as tf:
            recs += [SceneRecord.from_json(tf.extractfile(m).read()) for m in tf if m.name.endswith(".json")]
    assert len(recs) == 8 and all(r.questions and r.negatives is not None for r in recs)
    assert collect_stats(str(asked))["scenes"] == collect_stats(str(plain))["scenes"] == 8
    assert contact_sheet(str(asked), tmp_path / "sheet.png", n=4) == 4
    assert len(export_coco(str(asked), tmp_path / "coco")["images"]) == 8
    assert json.loads((asked / "run.json").read_text())["params"]["tasks"] == list(TASKS)
    assert "tasks" not in json.loads((plain / "run.json").read_text())["params"]
    # the run and the manifest name the records' schema
    for f in ("run.json", "manifest.json"):
        assert json.loads((asked / f).read_text())["schema"] == SCENE_SCHEMA_2
        assert json.loads((plain / f).read_text())["schema"] == SCENE_SCHEMA


def test_stats_count_questions_per_task_and_phrasing(bank, backgrounds, tmp_path):
    """``synthgen stats`` on shards with questions: every question counted once under its task, and
    under a phrasing with the scene's names, colours, boxes and points masked."""
    from synthgen.compose.config import ComposeParams
    from synthgen.compose.run import ComposeJob, run_compose
    from synthgen.compose.stats import collect_stats, phrasing

    assert phrasing("Give the box of the red block left of the pair of scissors.", ["red block", "scissors"]) == \
        "Give the box of the X left of the X."
    assert phrasing("What is at [1,2,30,40]? Point: (3,4) blue", []) == "What is at [box]? Point: (x,y) COLOUR"
    out = tmp_path / "asked"
    run_compose(ComposeJob(objects=str(bank), backgrounds=str(backgrounds), out=str(out), num_samples=12,
                           samples_per_shard=6, params=ComposeParams(same_category_p=0.7, tasks=TASKS)),
                executor="serial", progress=False)
    st = collect_stats(str(out))
    import tarfile

    asked = []
    for t in sorted(out.glob("scenes-*.tar")):
        with tarfile.open(t) as tf:
            asked += [q for m in tf if m.name.endswith(".json")
                      for q in SceneRecord.from_json(tf.extractfile(m).read()).questions]
    assert sum(st["tasks"].values()) == sum(st["phrasings"].values()) == len(asked) > 0
    assert {q["task"] for q in asked} == set(st["tasks"])
    names = {o.lower() for o in ("red block", "green block", "blue block", "yellow block")}
    assert not any(n in key.lower() for key in st["phrasings"] for n in names)


def test_the_contact_sheet_lists_each_scenes_questions(bank, backgrounds, tmp_path):
    from PIL import Image, ImageDraw

    from synthgen.compose.config import ComposeParams
    from synthgen.compose.inspection import contact_sheet, question_lines
    from synthgen.compose.run import ComposeJob, run_compose
    from synthgen.fonts import font

    out = tmp_path / "asked"
    run_compose(ComposeJob(objects=str(bank), backgrounds=str(backgrounds), out=str(out), num_samples=1,
                           samples_per_shard=1, params=ComposeParams(tasks=TASKS)), executor="serial", progress=False)
    plain, asked = tmp_path / "plain.png", tmp_path / "asked.png"
    contact_sheet(str(out), plain, n=1)
    contact_sheet(str(out), asked, n=1, questions=True)
    import tarfile

    with tarfile.open(next(out.glob("scenes-*.tar"))) as tf:
        rec = SceneRecord.from_json(next(tf.extractfile(m).read() for m in tf if m.name.endswith(".json")))
    f, _ = font(14)
    lines = question_lines(rec, ImageDraw.Draw(Image.new("RGB", (1, 1))), f, 10_000)
    assert len(lines) == len(rec.questions) > 0
    assert all(line.startswith(f"{q['task']}: {q['text']} -> {q['answer']}") for line, q in zip(lines, rec.questions))
    with Image.open(plain) as a, Image.open(asked) as b:
        assert b.width == a.width and b.height > a.height
