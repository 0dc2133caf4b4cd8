"""train-pin --tasks / eval-pin --scenes --tasks without a VLM: the weights, the draw of a
question per sample (the default is today's stream exactly; a mix does not depend on the data
splits), the codec's question prompts, the resume check, and the per-task metrics on hand-checked
cases."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from synthgen.compose.questions import scene_questions
from synthgen.errors import UserError
from synthgen.grounding import format_box, query_prompt
from synthgen.pin.evaluation import taskmetrics as M
from synthgen.pin.training import tasks as T

ALL = "name,referral,relation,attribute,all,absent,count,region,point"


# --- weights ---------------------------------------------------------------------------------

def test_task_weights_parse_and_refuse_in_one_line():
    assert T.parse_weights(None) == {"name": 1.0} == T.parse_weights("name=1")
    assert T.parse_weights("relation=0.5, name") == {"name": 1.0, "relation": 0.5}  # TASKS order
    assert T.parse_weights(["count=2", "all=0"]) == {"count": 2.0}  # weight 0: not asked
    assert T.format_weights({"name": 1.0, "relation": 0.5}) == "name=1,relation=0.5"
    for bad, words in (("colour=1", "unknown task 'colour'"), ("name=x", "must be a number"),
                       ("name=-1", ">= 0"), ("name=1,name=2", "given twice"), ("name=0", "no task"),
                       ("", "no task")):
        with pytest.raises(UserError, match=words) as e:
            T.parse_weights(bad)
        assert "\n" not in str(e.value)


def test_train_config_names_a_bad_tasks_value():
    from synthgen.pin.training.config import TrainConfig

    assert any("unknown task 'where'" in p for p in TrainConfig(shards="x", tasks="where=1").problems())
    assert not [p for p in TrainConfig(shards="x", tasks="name=1,count=0.5").problems() if "task" in p]


def test_resume_refuses_other_tasks_and_reads_old_runs_as_name():
    from synthgen.pin.training.checkpoint import resume_conflicts

    same = {"tasks": {"name": 1.0}}
    assert resume_conflicts({"tasks": {"name": 1.0}}, same) == []
    assert resume_conflicts({}, same) == []  # a run from before --tasks trained name alone
    out = resume_conflicts({}, {"tasks": {"name": 1.0, "count": 0.5}})
    assert out and all("--tasks" in line for line in out)
    assert resume_conflicts({"tasks": {"name": 1.0, "count": 0.5}}, {"tasks": {"name": 1.0, "count": 1.0}})


# --- the stream ------------------------------------------------------------------------------

@pytest.fixture
def scene_shards(bank, backgrounds, tmp_path):
    """Two shards of composed scenes with every task's fields and questions, and two without."""
    from synthgen.compose.config import ComposeParams
    from synthgen.compose.run import ComposeJob, run_compose

    out = {}
    for name, tasks in (("asked", tuple(ALL.split(","))), ("plain", ("name",))):
        job = ComposeJob(objects=str(bank), backgrounds=str(backgrounds), out=str(tmp_path / name),
                         num_samples=24, samples_per_shard=12,
                         params=ComposeParams(size=112, tasks=tasks, same_category_p=0.7, masks=True))
        run_compose(job, executor="serial", progress=False)
        out[name] = sorted(str(p) for p in (tmp_path / name).glob("scenes-*.tar"))
    return out


@pytest.fixture(scope="module")
def codec():
    from synthgen.demo.tiny_blip2 import build_tokenizer
    from synthgen.pin.models.adapters.base import TextCodec

    tok = build_tokenizer()
    return TextCodec(tok, 8, tok.convert_tokens_to_ids("<image>"))


def _stream(shards, codec, tasks=None, seed=3):
    from synthgen.pin.training.data import SceneStream, StreamConfig

    return SceneStream(StreamConfig(shards=shards, batch_size=4, seed=seed, shuffle_buffer=8, tasks=tasks), codec)


def _epoch(stream, n_splits: int, epoch: int = 0) -> dict:
    """key -> the sample drawn, over every split of one epoch."""
    out = {}
    for split in range(n_splits):
        for pos, raw in enumerate(stream.raw_epoch(split, n_splits, epoch)):
            s = stream._decode(raw, split, epoch, pos)
            out[raw["__key__"]] = (s["task"], s["prompt"], s["answer"], tuple(s["ids"]), tuple(s["labels"]))
    return out


@pytest.mark.parametrize("kind", ["asked", "plain"])
def test_default_tasks_are_todays_stream_exactly(scene_shards, codec, kind):
    """name=1 (and no --tasks) asks what train-pin asked before: the target drawn by (seed, epoch,
    split, position), its referral in PIN's prompt, its box; the same token ids and labels."""
    from synthgen.pin.training.data import _record, _rng

    for tasks in (None, {"name": 1.0}, {"name": 2.5}):
        stream = _stream(scene_shards[kind], codec, tasks)
        n = 0
        for split, n_splits in ((0, 1), (0, 2), (1, 2)):
            for pos, raw in enumerate(stream.raw_epoch(split, n_splits, 1)):
                s = stream._decode(raw, split, 1, pos)
                rec = _record(raw)
                target = int(_rng(3, 1, split, pos, 2).integers(len(rec.objects)))  # HEAD's draw
                o = rec.objects[target]
                ids, labels = codec.encode(o.referral, format_box(o.box))
                assert (s["ids"], s["labels"], s["box"]) == (ids, labels, [float(v) for v in o.box])
                assert (s["task"], query_prompt(s["prompt"]), s["answer"]) == ("name", query_prompt(o.referral),
                                                                                 format_box(o.box))
                if target == rec.target:  # the record's own text
                    assert query_prompt(s["prompt"]) + " " + s["answer"] == rec.prompt + " " + rec.answer
                n += 1
        assert n == 24 + 24


def test_a_mix_draws_each_scenes_question_whatever_the_splits(scene_shards, codec):
    tasks = T.parse_weights("name=1,relation=1,all=1,count=1,absent=1,region=1,point=1,attribute=1")
    stream = _stream(scene_shards["asked"], codec, tasks)
    one = _epoch(stream, 1)
    assert one == _epoch(_stream(scene_shards["asked"], codec, tasks), 2) == _epoch(
        _stream(scene_shards["asked"], codec, tasks), 3)
    assert len(one) == 24
    other_epoch = _epoch(stream, 1, epoch=1)
    assert other_epoch != one  # drawn again each epoch
    assert _epoch(_stream(scene_shards["asked"], codec, tasks, seed=4), 1) != one


def test_mixed_questions_are_the_scenes_own_and_weights_steer_the_draw(scene_shards, codec):
    from synthgen.pin.training.data import _record

    tasks = T.parse_weights("name=1,count=1,region=1,absent=1,all=1,point=1")
    seen = Counter()
    for kind in ("asked", "plain"):
        stream = _stream(scene_shards[kind], codec, tasks)
        for epoch in range(4):
            for pos, raw in enumerate(stream.raw_epoch(0, 1, epoch)):
                s = stream._decode(raw, 0, epoch, pos)
                rec = _record(raw)
                seen[kind, s["task"]] += 1
                if s["task"] == "name":
                    assert s["prompt"] in [o.referral for o in rec.objects]
                    continue
                # a question of this scene and task, as recorded or as derived (any phrasing)
                derived = scene_questions(rec, [s["task"]])
                pool = [q for q in rec.questions or () if q["task"] == s["task"]] or derived
                assert (s["answer"], s["task"]) in {(q["answer"], q["task"]) for q in pool}
                if kind == "asked":
                    assert s["prompt"] in {q["text"] for q in pool}
                ids, labels = codec.encode(None, s["answer"], prompt=s["prompt"])
                assert (s["ids"], s["labels"]) == (ids, labels)
    # records without colours, points and negatives ask no point or absent question
    assert seen["plain", "point"] == seen["plain", "absent"] == 0
    assert all(seen["asked", t] > 0 for t in ("name", "count", "region", "absent", "all", "point")), seen
    # a zero weight is never drawn; a heavy one dominates
    heavy = _stream(scene_shards["asked"], codec, T.parse_weights("name=0.01,count=100"))
    drawn = Counter(v[0] for v in _epoch(heavy, 1).values())
    assert drawn["count"] >= 20 and set(drawn) <= {"name", "count"}


def test_a_question_prompt_puts_the_loss_on_the_answer_only(codec):
    tok = codec.tokenizer
    ids, labels = codec.encode(None, "3 red blocks", prompt="How many red blocks are there?")
    assert ids[:8] == [codec.image_token_id] * 8
    assert tok.decode([i for i, lab in zip(ids, labels) if lab != -100], skip_special_tokens=True) == " 3 red blocks"
    assert tok.decode(ids[8:], skip_special_tokens=True) == "How many red blocks are there? 3 red blocks"
    # PIN's prompt through the referral, as before
    assert codec.encode(None, "[0,0,14,14]", prompt=query_prompt("cat")) == codec.encode("cat", "[0,0,14,14]")


# --- metrics ---------------------------------------------------------------------------------

def test_boxes_are_matched_one_to_one_greedily_and_unmatched_count_zero():
    a, b = [0, 0, 10, 10], [20, 20, 30, 30]
    assert M.match_boxes([a], [a]) == [1.0]
    assert M.match_boxes([a, b], [b, a]) == [1.0, 1.0]            # order does not matter
    assert M.match_boxes([a, b], [a]) == [1.0, 0.0]               # a missed box
    assert M.match_boxes([a], [a, b, [40, 40, 50, 50]]) == [1.0, 0.0, 0.0]  # extra boxes
    assert M.match_boxes([a], [a, a]) == [1.0, 0.0]               # one to one: a duplicate does not count twice
    half = [0, 0, 10, 5]                                          # IoU 0.5 with a
    assert M.match_boxes([a, half], [half]) == [1.0, 0.0]         # greedy: the best pair first
    assert M.match_boxes([], []) == []
    # the best pair first (g1-p2: 1.0), then the best of the rest (g2-p1: 70 / 150)
    g1, g2 = [0, 0, 10, 10], [5, 0, 15, 10]
    p1, p2 = [0, 0, 12, 10], [0, 0, 10, 10]
    got = M.match_boxes([g1, g2], [p1, p2])
    assert got[0] == 1.0 and got[1] == pytest.approx(7 * 10 / (12 * 10 + 10 * 10 - 7 * 10))


def test_scores_of_each_task_on_hand_checked_answers():
    s = M.score("all", "[0,0,10,10] [20,20,30,30]", " [20,20,30,30] [0,0,10,10]")
    assert s == {"ious": [1.0, 1.0], "parsed": True}
    assert M.score("relation", "[0,0,10,10]", " [0,0,10,10] [20,20,30,30]")["ious"] == [1.0]  # the first box only
    assert M.score("name", "[0,0,10,10]", " somewhere") == {"ious": [0.0], "parsed": False}
    assert M.score("absent", "There is no dog in the image.", " There is no dog in the image.")["correct"]
    assert not M.score("absent", "There is no dog in the image.", " [0,0,10,10]")["correct"]
    assert M.score("count", "3 cups", " 3 cups")["correct"] and M.score("count", "no cups", "no cups")["correct"]
    assert not M.score("count", "3 cups", " 2 cups")["correct"]
    assert not M.score("count", "3 cups", " many")["parsed"]
    assert M.score("region", "an apple", " An apple.")["correct"] and M.score("region", "a cup", "cup")["correct"]
    assert not M.score("region", "a cup", " a mug")["correct"]
    mask = np.zeros((20, 20), np.uint8)
    mask[5:10, 5:10] = 2  # object 1
    assert M.score_point(" (6,7)", 1, [0, 0, 20, 20], mask) == {"correct": True, "parsed": True, "rule": "mask"}
    assert not M.score_point(" (1,1)", 1, [0, 0, 20, 20], mask)["correct"]  # in the box, not on the object
    assert M.score_point(" (1,1)", 1, [0, 0, 20, 20], None) == {"correct": True, "parsed": True, "rule": "box"}
    assert not M.score_point(" (20,1)", 1, [0, 0, 20, 20], None)["correct"]  # x2 exclusive


def test_task_table_from_scored_records():
    recs = [{"task": "all", "ious": [1.0, 0.0], "n_true": 2, "parsed": True},
            {"task": "all", "ious": [0.6], "n_true": 1, "parsed": True},
            {"task": "count", "correct": True, "parsed": True},
            {"task": "count", "correct": False, "parsed": False}]
    t = M.summarize_tasks(recs, ["all", "count", "region"])
    assert t["all"]["miou"] == pytest.approx(1.6 / 3) and t["all"]["p@0.5"] == pytest.approx(2 / 3)
    assert t["all"]["exact"] == 0.5 and t["all"]["slots"] == 3
    assert t["count"] == {"n": 2, "unparsed": 1, "metric": "accuracy", "accuracy": 0.5}
    assert t["region"]["n"] == 0 and t["region"]["accuracy"] is None


def test_eval_job_takes_tasks_with_scenes_only():
    from synthgen.pin.evaluation.job import EvalJob
    from synthgen.pin.evaluation.protocol import EvalProtocol

    assert EvalJob(run="r", scenes="s", tasks="count,all").kind == "scenes"
    for kw, words in ((dict(coco_json="c.json", images="i", tasks="count"), "--tasks applies to --scenes"),
                      (dict(scenes="s", tasks="colour"), "unknown task 'colour'"),
                      (dict(scenes="s", protocol=EvalProtocol(baseline="random")), "does not apply to --scenes"),
                      (dict(scenes="s", images="i"), "do not apply to --scenes"),
                      (dict(scenes="s", voc="v"), "--voc and --scenes")):
        with pytest.raises(UserError, match=words):
            EvalJob(run="r", **kw)


def test_scene_task_queries_read_questions_and_masks(scene_shards):
    from synthgen.pin.evaluation.scenetasks import scene_task_queries

    got = list(scene_task_queries(scene_shards["asked"], ALL.split(","), limit=5, image_size=112))
    by = Counter(q["task"] for _, _, q in got)
    assert max(by.values()) == 5 and by["name"] == 5 and by["count"] == 5
    assert all(mask is not None and mask.shape == (112, 112) for _, mask, _ in got)
    for img, mask, q in got:
        assert img.shape == (3, 112, 112)
        assert q["boxes"] == [[*map(int, b)] for b in q["boxes"]]
        if q["task"] == "point":
            x, y = map(int, q["answer"].strip("()").split(","))
            assert mask[y, x] == q["targets"][0] + 1
    # shards without questions derive them (those the records support)
    plain = Counter(q["task"] for _, _, q in scene_task_queries(scene_shards["plain"], ALL.split(","), image_size=112))
    assert plain["count"] > 0 and plain["all"] > 0 and plain["point"] == plain["absent"] == 0
    assert Path(scene_shards["plain"][0]).exists()
