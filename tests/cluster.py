"""A real multi-node Ray cluster on loopback for tests: a head and a worker node (separate raylets,
object stores and worker processes) started by ``ray.cluster_utils.Cluster`` in a child process.

``ray start --address`` cannot add a second node on one machine while every Ray process is kept
on 127.0.0.1 (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` refuses multi-node), so the nodes are started
the way Ray's own tests do. The child reads commands on stdin: ``kill`` removes the worker node
without a graceful drain (its raylet and workers die, as when a machine is lost), ``quit`` stops
the cluster.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = r"""
import os, sys
from ray.cluster_utils import Cluster
mem = 120 << 20
c = Cluster(initialize_head=True,
            head_node_args={"num_cpus": 1, "object_store_memory": mem, "include_dashboard": False})
worker = c.add_node(num_cpus=1, object_store_memory=mem, resources={"worker_node": 1})
c.wait_for_nodes()
print("ADDRESS", c.address, flush=True)
for line in sys.stdin:
    cmd = line.strip()
    if cmd == "kill" and worker is not None:
        c.remove_node(worker, allow_graceful=False)
        worker = None
        print("KILLED", flush=True)
    elif cmd == "quit":
        break
c.shutdown()
print("DOWN", flush=True)
"""


class LoopbackCluster:
    """``with LoopbackCluster(env) as cluster: ... cluster.address ... cluster.kill_worker()``"""

    def __init__(self, env: dict[str, str] | None = None, timeout: float = 180):
        self.env = dict(env or os.environ)
        self.env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # every Ray process on 127.0.0.1
        self.env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        root = str(Path(__file__).resolve().parents[1])  # the nodes' workers import synthgen
        self.env["PYTHONPATH"] = root + os.pathsep + self.env.get("PYTHONPATH", "")
        self.timeout = timeout
        self.address = ""
        self.proc: subprocess.Popen | None = None

    def _expect(self, word: str) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(word):
                return line.split(None, 1)[1].strip() if " " in line.strip() else ""
        raise RuntimeError(f"the test cluster stopped before printing {word}")

    POINTER = Path("/tmp/ray/ray_current_cluster")  # the address `ray.init("auto")` would join

    def __enter__(self) -> "LoopbackCluster":
        self._pointer_was_there = self.POINTER.exists()
        self.proc = subprocess.Popen([sys.executable, "-c", SCRIPT], env=self.env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.address = self._expect("ADDRESS")
        return self

    def _send(self, cmd: str) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()

    def kill_worker(self) -> None:
        self._send("kill")
        self._expect("KILLED")

    def __exit__(self, *exc) -> None:
        if self.proc is None:
            return
        try:
            self._send("quit")
            self.proc.wait(timeout=self.timeout)
        except Exception:  # noqa: BLE001 - never leave a cluster behind
            self.proc.kill()
            self.proc.wait()
        if not self._pointer_was_there:
            self.POINTER.unlink(missing_ok=True)
