"""``synthgen run RECIPE.yaml``: the steps a recipe's ``run:`` section declares, in order, each run
as the ``synthgen`` command a user would type (echoed first, so it can be copied).

    run:
      vars: {out: demo-out, vlm: blip2}        # {name} in any value; --set name=VALUE overrides
      env: {U2NET_HOME: "{out}/models/rembg"}  # environment of every step
      steps:
        - compose: {objects: "{out}/objects", backgrounds: "{out}/backgrounds", out: "{out}/shards"}
        - train-pin: {shards: "{out}/shards", out: "{out}/runs/pin"}
          tags: [train]                        # --only/--skip take commands, step names or tags
          launcher: "torchrun --nproc-per-node 2"   # optional: LAUNCHER -m synthgen train-pin ...
      message: "what the user should know at the end"

- :mod:`.plan`     the recipe read into steps, a step into its command line (pure), when it is done
- :mod:`.runner`   running the steps (skip what is done, resume, stop at a failure)
- :mod:`.report`   the console: the summary table and the eval-pin metrics
"""

from synthgen.workflow.plan import STATE_FILE, Plan, Step, command_line, is_done, load_plan, output_of, select
from synthgen.workflow.runner import Outcome, RunResult, process_line, run_plan, shell_line

__all__ = ["STATE_FILE", "Outcome", "Plan", "RunResult", "Step", "command_line", "is_done", "load_plan",
           "output_of", "process_line", "run_plan", "select", "shell_line"]
