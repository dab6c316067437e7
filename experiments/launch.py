r"""Starts N local CPU processes of the runner that form one JAX cluster.

    python -m experiments.launch --num_processes=2 -- --dataset=digits --workdir=runs/x
    python -m experiments.launch --num_processes=4 --devices_per_process=1 -- --seeds=0,1

For tests, and for people without a cluster manager: TPU pods and SLURM start one runner per
host themselves (README "Several hosts"). Process i runs

    python -m experiments.main <runner flags> --distributed \
        --coordinator_address=127.0.0.1:<free port> --num_processes=N --process_id=i

on the CPU with `--devices_per_process` forced host devices, so the mesh has N x that many
devices and the processes reduce through gloo. Process 0 prints the run's log; the others print
only what goes wrong, prefixed with their index. When one process fails, the others are stopped
and the launcher exits with the failed process's status.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

from absl import app, flags

# Seconds a process has to exit after SIGTERM before it is killed.
_GRACE_S = 10


def define_flags() -> None:
    """The launcher's flags (defined on demand: `experiments.main` owns `--num_processes`)."""
    flags.DEFINE_integer("num_processes", 2, "Processes to start.", lower_bound=1)
    flags.DEFINE_integer(
        "devices_per_process", 2, "Forced host CPU devices per process.", lower_bound=1
    )
    flags.DEFINE_integer("port", 0, "Coordinator port on 127.0.0.1 (0: a free one).")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_env(devices_per_process: int, env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a launched process: CPU only, forced host devices, this checkout first.

    Args:
      devices_per_process: host CPU devices XLA creates in each process.
      env: the environment to start from (default: this process's).

    Returns:
      A new environment dict.
    """
    env = dict(os.environ if env is None else env)
    env["JAX_PLATFORMS"] = "cpu"
    xla = re.sub(r"--xla_force_host_platform_device_count=\S+", "", env.get("XLA_FLAGS", ""))
    env["XLA_FLAGS"] = f"{xla.strip()} --xla_force_host_platform_device_count={devices_per_process}"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return env


def _prefix_lines(stream, prefix: str) -> None:
    for line in stream:
        sys.stderr.write(prefix + line)
    stream.close()


def launch(
    runner_args: Sequence[str],
    *,
    num_processes: int,
    devices_per_process: int = 2,
    port: int = 0,
) -> int:
    """Runs `experiments.main` in `num_processes` local processes until all end.

    Args:
      runner_args: the runner's flags, the same for every process.
      num_processes: processes to start.
      devices_per_process: forced host CPU devices per process.
      port: the coordinator's port on 127.0.0.1 (0: a free one).

    Returns:
      0 when every process succeeded, else the first failed process's exit status.
    """
    address = f"127.0.0.1:{port or free_port()}"
    env = process_env(devices_per_process)
    procs: list[subprocess.Popen] = []
    readers: list[threading.Thread] = []
    try:
        for i in range(num_processes):
            cmd = [
                sys.executable,
                "-m",
                "experiments.main",
                *runner_args,
                "--distributed",
                f"--coordinator_address={address}",
                f"--num_processes={num_processes}",
                f"--process_id={i}",
            ]
            pipe = None if i == 0 else subprocess.PIPE
            proc = subprocess.Popen(
                cmd, env=env, stdout=pipe, stderr=subprocess.STDOUT if i else None, text=True
            )
            if i:
                readers.append(
                    threading.Thread(
                        target=_prefix_lines, args=(proc.stdout, f"[process {i}] "), daemon=True
                    )
                )
                readers[-1].start()
            procs.append(proc)
        while True:
            codes = [p.poll() for p in procs]
            failed = [c for c in codes if c not in (None, 0)]
            if failed:
                return failed[0]
            if all(c == 0 for c in codes):
                return 0
            time.sleep(0.2)
    finally:
        # A failed or interrupted run: the other processes would wait for it in a collective.
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=_GRACE_S)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for r in readers:
            r.join(timeout=_GRACE_S)


def main(argv):
    sys.exit(
        launch(
            argv[1:],
            num_processes=flags.FLAGS.num_processes,
            devices_per_process=flags.FLAGS.devices_per_process,
            port=flags.FLAGS.port,
        )
    )


if __name__ == "__main__":
    define_flags()
    app.run(main)
