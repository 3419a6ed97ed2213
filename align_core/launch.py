"""The training entry point: ``python -m align_core.launch CONFIG [section.key=value ...]``.

Each rank runs this module: the ``deepspeed`` or ``torchrun`` launcher starts one copy per rank with
RANK/WORLD_SIZE/LOCAL_RANK set; started alone it trains as a one-rank world. ``launch_and_wait`` starts
it (or the launcher) as a subprocess and waits, so a crash in training never takes the caller with
it: the Prefect task and ``alignflow train`` both train through it.

Exit codes: 0 trained (or already complete), 2 bad config or input (one line on stderr), else failure.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from align_core.errors import TrainingFailed, UsageError
from align_core.paths import configure_environment

LAUNCHERS = ("deepspeed", "torchrun")
# Variables a launcher sets per rank: a child must not inherit the parent's own process group.
DISTRIBUTED_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "CROSS_RANK", "CROSS_SIZE")
RESULT_PREFIX = "ALIGNFLOW_RESULT "
USAGE_EXIT_CODE = 2
TAIL_LINES = 60  # output lines a failure report quotes
# The one line a child prints on a usage error; a launcher may prefix it with the rank ("[rank0]: ").
ERROR_LINE = re.compile(r"^(?:\[[^\]]*\]:?\s*)?error: (?P<message>.+)$")


def run(config_path: str | Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Train in this process as one rank of whatever world the environment describes."""
    configure_environment()
    _quiet_libraries()
    from align_core.config import load_config
    from align_core.trainers import get_trainer

    config = load_config(config_path, overrides)
    return get_trainer(config.train_cfgs.algorithm)(config).train()


def _quiet_libraries() -> None:
    # DeepSpeed logs every engine detail at INFO and torch warns about its own c10d renames each step.
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")
    warnings.filterwarnings("ignore", message=".*torch.distributed.*is deprecated.*")
    from deepspeed.utils import logger as deepspeed_logger

    deepspeed_logger.setLevel(logging.WARNING)


def _launcher_binary(name: str) -> str:
    beside_python = Path(sys.executable).parent / name
    found = str(beside_python) if beside_python.exists() else shutil.which(name)
    if not found:
        raise UsageError(f"launcher {name!r} not found beside {sys.executable} or on PATH")
    return found


def multinode_arguments(
    launcher: str = "deepspeed",
    hostfile: str | Path | None = None,
    num_nodes: int | None = None,
    master_addr: str | None = None,
    master_port: int | None = None,
    node_rank: int | None = None,
) -> list[str]:
    """The launcher's own flags for a run over several nodes. DeepSpeed starts every node from one
    ``hostfile`` (``hostname slots=N`` lines, over pdsh/ssh); torchrun runs once per node, each told the
    node count, its rank and the master's address."""
    if launcher not in LAUNCHERS:
        raise UsageError(f"unknown launcher {launcher!r}; expected one of {', '.join(LAUNCHERS)}")
    if hostfile is not None and launcher == "torchrun":
        raise UsageError("torchrun takes no hostfile: run it on every node with --num-nodes, --node-rank and --master-addr")
    if hostfile is not None and not Path(hostfile).is_file():
        raise UsageError(f"hostfile {hostfile} does not exist")
    names = {"deepspeed": {"nodes": "--num_nodes", "rank": "--node_rank"},
             "torchrun": {"nodes": "--nnodes", "rank": "--node_rank"}}[launcher]
    args: list[str] = []
    for flag, value in (("--hostfile", hostfile), (names["nodes"], num_nodes), (names["rank"], node_rank),
                        ("--master_addr", master_addr), ("--master_port", master_port)):
        if value is not None:
            args += [flag, str(Path(value).absolute()) if flag == "--hostfile" else str(value)]
    return args


def launch_command(
    config_path: str | Path,
    overrides: Sequence[str] = (),
    nproc: int = 1,
    launcher: str = "deepspeed",
    launcher_args: Sequence[str] = (),
) -> list[str]:
    """The command that trains ``config_path`` on ``nproc`` local ranks (plain python for one rank)."""
    entry = ["align_core.launch", str(Path(config_path).absolute()), *overrides]
    if nproc < 1:
        raise UsageError(f"nproc must be >= 1, got {nproc}")
    if nproc == 1 and not launcher_args:
        return [sys.executable, "-m", *entry]
    from align_core.trainers.engine import free_port

    # a free port unless the caller chose one: the launchers' fixed default collides between concurrent runs
    port = [] if any("master_port" in arg for arg in launcher_args) else ["--master_port", str(free_port())]
    if launcher == "deepspeed":
        # --num_gpus is DeepSpeed's name for local ranks; on CPU (DS_ACCELERATOR=cpu) they are processes
        return [_launcher_binary("deepspeed"), "--num_gpus", str(nproc), *port, *launcher_args, "--no_local_rank", "--module", *entry]
    if launcher == "torchrun":
        return [_launcher_binary("torchrun"), "--nproc_per_node", str(nproc), *port, *launcher_args, "-m", *entry]
    raise UsageError(f"unknown launcher {launcher!r}; expected one of {', '.join(LAUNCHERS)}")


SHM_FOLDER = Path("/dev/shm")


def release_shared_memory(command: Sequence[str]) -> list[Path]:
    """Remove the shared-memory buffers a finished (or killed) multi-rank run on this machine left: DeepSpeed's
    CPU allreduce creates ``deepspeed_allreduce_buffer_<uid>_<addr>_<port>_<rank>`` in /dev/shm per rank and
    never unlinks it (tens of MB each; hundreds of runs filled a 24 GiB machine's memory). The port is the
    launcher's ``--master_port``, unique to the run. Returns the files removed."""
    args = list(command)
    if "--master_port" not in args or not SHM_FOLDER.is_dir():
        return []
    port = args[args.index("--master_port") + 1]
    removed = []
    for path in SHM_FOLDER.glob(f"deepspeed_allreduce_buffer_{os.getuid()}_*_{port}_*"):
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def launch_env(nproc: int) -> dict[str, str]:
    """The child's environment: ours minus any process-group settings, one OpenMP thread per rank if several."""
    configure_environment()
    env = {key: value for key, value in os.environ.items() if key not in DISTRIBUTED_ENV}
    if nproc > 1:
        env.setdefault("OMP_NUM_THREADS", "1")  # ranks share the cores; more threads each only thrash
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run_streaming(command: Sequence[str], emit: Callable[[str], None], env: dict[str, str] | None = None) -> int:
    """Run ``command``, passing each output line (stdout and stderr merged) to ``emit``; its exit code."""
    process = subprocess.Popen(
        list(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True, bufsize=1, errors="replace"
    )
    assert process.stdout is not None
    for line in process.stdout:
        emit(line.rstrip("\n"))
    return process.wait()


def parse_result(lines: Sequence[str]) -> dict[str, Any] | None:
    """The result a launched run printed (``ALIGNFLOW_RESULT {json}``), if any."""
    for line in reversed(lines):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    return None


def launch_and_wait(
    config_path: str | Path,
    overrides: Sequence[str] = (),
    nproc: int = 1,
    launcher: str = "deepspeed",
    launcher_args: Sequence[str] = (),
    emit: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train ``config_path`` in a subprocess on ``nproc`` local ranks; the result it reports.

    ``emit`` gets ``launching: <command>``, then each output line (log lines, no progress bar). The
    result line is returned, not emitted; when it is missing, the run's ``train_result.json`` stands
    in. Raises ``UsageError`` with the child's ``error:`` message when it exits 2 (bad config or
    input), ``TrainingFailed`` on any other exit code or when no result can be found.
    """
    command = launch_command(config_path, [*overrides, "logger_cfgs.progress_bar=false"], nproc, launcher, launcher_args)
    emit("launching: " + " ".join(command))
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    result_lines: list[str] = []
    error_lines: list[str] = []  # held back: with exit code 2 the raised UsageError says it, once

    def keep(line: str) -> None:
        if line.startswith(RESULT_PREFIX):
            result_lines.append(line)
            return
        tail.append(line)
        if ERROR_LINE.match(line):
            error_lines.append(line)
        else:
            emit(line)

    try:
        exit_code = run_streaming(command, keep, launch_env(nproc))
    finally:
        release_shared_memory(command)  # however the ranks ended
    if exit_code == USAGE_EXIT_CODE:
        if error_lines:
            raise UsageError(ERROR_LINE.match(error_lines[-1])["message"])
        raise UsageError(f"training of {config_path} exited with code 2. Last output:\n" + "\n".join(tail))
    for line in error_lines:
        emit(line)
    if exit_code != 0:
        raise TrainingFailed(
            f"training of {config_path} exited with code {exit_code}; rerun to resume from the last checkpoint "
            f"in {_output_dir(config_path, overrides)}",
            tail,
            exit_code,
        )
    result = parse_result(result_lines)
    if result is None:
        from align_core.config import load_config
        from align_core.trainers.rundir import finished_result

        result = finished_result(load_config(config_path, overrides))
    if result is None:
        raise TrainingFailed(
            f"training of {config_path} exited 0 but printed no result, and {_output_dir(config_path, overrides)} "
            "holds no train_result.json of this config",
            tail,
        )
    return result


def _output_dir(config_path: str | Path, overrides: Sequence[str]) -> str:
    from align_core.config import load_config

    try:
        return str(load_config(config_path, overrides).logger_cfgs.output_dir)
    except UsageError:
        return "its output_dir"


def main(argv: Sequence[str] | None = None) -> int:
    args = [a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("--local_rank")]
    if not args or args[0] in ("-h", "--help"):
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        return 2
    try:
        result = run(args[0], args[1:])
    except UsageError as error:
        # one write of the whole line: under `python -u` print() writes the text and its newline apart, and
        # two ranks failing alike interleaved them into one unreadable line
        sys.stderr.write(f"error: {error}\n")
        sys.stderr.flush()
        return 2
    finally:
        _leave_process_group()
    if int(os.environ.get("RANK", "0")) == 0:
        print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


def _leave_process_group() -> None:
    """Tear the process group down before the interpreter exits: left to the interpreter's shutdown, its
    communication threads were sometimes destroyed still running, and a run that had just said its
    one-line error aborted (SIGABRT, "terminate called without an active exception") instead of exiting 2."""
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
