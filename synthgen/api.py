"""The Python API: one function per command, made from the command's option contract
(:mod:`synthgen.commands`), so its keywords are the command's option names with the same defaults,
and it builds the command's configuration exactly as the command line does.

    import synthgen

    bank = synthgen.render("coco", "objects/", per_category=60)
    synthgen.prepare_backgrounds("BG-20k/train", "bg-448/")
    synthgen.compose("objects/", "bg-448/", "shards/", 60_000, a_max=3)
    scenes = synthgen.SceneGenerator("objects/", "bg-448/", num_samples=1000)   # scene k in memory
    synthgen.train_pin("shards/", out="runs/pin", vlm="blip2", steps=1000)
    metrics = synthgen.eval_pin("runs/pin", coco_json="instances_val2017.json", images="val2017/")
    answer = synthgen.predict("runs/pin", "photo.jpg", "teddy bear")

Every function takes ``recipe=PATH`` where its command takes ``--recipe`` (keyword arguments win
over the recipe), raises :class:`synthgen.errors.UserError` (one line) for bad input, and resumes
its output like the command. ``f.call(...)`` builds the :class:`~synthgen.commands.core.Call`
without running it. Nothing heavy is imported until a function is called.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from synthgen.commands import COMMANDS, Call, build
from synthgen.commands.compose import scene_params
from synthgen.errors import UserError, raise_problems

# API name -> (command, its positional parameters, the callbacks its runner takes with their defaults)
FUNCTIONS: dict[str, tuple[str, tuple[str, ...], dict[str, Any]]] = {
    "render": ("render", ("categories", "out"), {"on_category": None, "echo": None}),
    "bank_from_annotations": ("bank-from-annotations", ("annotations", "images", "out"), {}),
    "prepare_backgrounds": ("prepare-backgrounds", ("backgrounds", "out"), {}),
    "prepare_objects": ("prepare-objects", ("objects", "out"), {}),
    "compose": ("compose", ("objects", "backgrounds", "out", "num_samples"), {"echo": print}),
    "preview": ("preview", ("source",), {}),
    "stats": ("stats", ("shards",), {}),
    "export": ("export", ("shards", "out"), {}),
    "export_coco": ("export-coco", ("shards", "out"), {}),
    "train_pin": ("train-pin", ("shards",), {"echo": print}),
    "eval_pin": ("eval-pin", ("run",), {}),
    "predict": ("predict", ("run", "image", "text"), {}),
    "import_pin": ("import-pin", ("file", "out"), {}),
    "export_pin": ("export-pin", ("run", "out"), {}),
    "run": ("run", ("recipe",), {}),
    "demo": ("demo", (), {}),
    "demo_data": ("demo-data", ("out",), {"say": print}),
    "prefetch": ("prefetch", ("what",), {"say": print}),
    "table": ("table", ("runs",), {}),
}


def _given(command: str, positional: tuple[str, ...], args: tuple, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    cmd = COMMANDS[command]
    if len(args) > len(positional):
        raise TypeError(f"{command} takes {len(positional)} positional arguments ({', '.join(positional)})")
    given = dict(zip(positional, args))
    twice = sorted(set(given) & set(kwargs))
    if twice:
        raise TypeError(f"{command} got {', '.join(twice)} twice")
    hidden = [k for k in kwargs if any(k in o.keys() and not o.api for o in cmd.options)]
    if hidden:
        raise UserError(f"{command}: unknown option(s) {', '.join(hidden)} (a command-line option only)")
    return {**given, **kwargs}


def _function(api_name: str, command: str, positional: tuple[str, ...], hooks: dict[str, Any]) -> Callable:
    cmd = COMMANDS[command]

    def call(*args: Any, **kwargs: Any) -> Call:
        return build(cmd, _given(command, positional, args, kwargs))

    def function(*args: Any, **kwargs: Any) -> Any:
        chosen = {h: kwargs.pop(h, default) for h, default in hooks.items()}
        return call(*args, **kwargs).execute(**chosen)

    P = inspect.Parameter
    params: list[inspect.Parameter] = []
    for n in positional:  # required ones have no default, unless a recipe may give them or one before them has one
        opt = cmd.option(n)
        free = opt.required and not opt.recipe and all(p.default is P.empty for p in params)
        params.append(P(n, P.POSITIONAL_OR_KEYWORD, default=P.empty if free else opt.default))
    params += [P(o.name, P.KEYWORD_ONLY, default=o.default) for o in cmd.options if o.api and o.name not in positional]
    params += [P(h, P.KEYWORD_ONLY, default=d) for h, d in hooks.items()]
    lines = [f"``synthgen {command}``: {cmd.help}", "", "Options (as ``synthgen " + command + " --help`` tells):"]
    lines += [f"    {o.name}: {o.help}" for o in cmd.options if o.api]
    for f in (function, call):
        f.__name__ = f.__qualname__ = api_name if f is function else f"{api_name}.call"
        f.__signature__ = inspect.Signature(params if f is function else params[:-len(hooks) or None])
        f.__doc__ = "\n".join(lines) if f is function else f"The Call that {api_name}() runs, built, not run."
    function.call = call
    return function


for _name, (_command, _positional, _hooks) in FUNCTIONS.items():
    globals()[_name] = _function(_name, _command, _positional, _hooks)


def compose_params(**options: Any):
    """:class:`~synthgen.compose.config.ComposeParams` from compose's scene options named as
    ``synthgen compose`` names them (``a_max``, ``s_min`` as a list or ``"0.3,0.2,0.1"``, ...,
    ``recipe=PATH`` for a recipe's ``compose:`` section); unknown names are a one-line error."""
    return scene_params(options)


class SceneGenerator:
    """Scenes of the composition function in memory, for a DataLoader or a notebook: item ``k``
    is the scene ``synthgen compose`` writes under key ``k`` with the same inputs and options
    (the same pixels before JPEG encoding, the same record). Picklable: each DataLoader worker
    opens the bank and lists the backgrounds once, on first use.

        gen = SceneGenerator("objects/", "bg/", num_samples=10_000, a_max=3, seed=0)
        scene = gen[0]   # .image (H, W, 3) uint8 (.canvas: PIL), .mask, .record (boxes, names, referral), .key
        loader = torch.utils.data.DataLoader(gen, batch_size=None, num_workers=4, collate_fn=...)
    """

    def __init__(self, objects: str, backgrounds: str, num_samples: int | None = None, *,
                 extra_object_roots: Sequence[str] = (), categories_map: str | None = None,
                 recipe: str | Path | None = None, **params: Any):
        self.objects, self.backgrounds = str(objects), str(backgrounds)
        self.num_samples = num_samples
        self.extra_object_roots = tuple(str(r) for r in extra_object_roots)
        self.categories_map = categories_map
        self.params = scene_params(params, recipe=recipe) if recipe is not None else scene_params(params)
        raise_problems(self.params.problems())
        self._composer = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_composer": None}

    def composer(self):
        if self._composer is None:
            from synthgen.bank.reader import ObjectBank
            from synthgen.compose.backgrounds import list_backgrounds
            from synthgen.compose.scene import Composer

            bank = ObjectBank.open(self.objects, extra_roots=self.extra_object_roots, max_side=self.params.size,
                                   categories_map=self.categories_map)
            listing = list_backgrounds(self.backgrounds)
            if not listing.items:
                raise UserError(f"no usable backgrounds in {self.backgrounds}")
            self._composer = Composer(self.params, bank, listing.items)
        return self._composer

    def __len__(self) -> int:
        if self.num_samples is None:
            raise TypeError("SceneGenerator without num_samples is endless: iterate it, or give num_samples")
        return self.num_samples

    def __getitem__(self, k: int):
        if not isinstance(k, int) or k < 0 or (self.num_samples is not None and k >= self.num_samples):
            raise IndexError(f"scene {k!r} out of range")
        return self.composer().scene(k)

    def __iter__(self) -> Iterator:
        k = 0
        while self.num_samples is None or k < self.num_samples:
            yield self[k]
            k += 1
