"""Commands that start several CPU training processes (gloo), shared by the data-parallel tests."""

import os
import socket
import sys


def launch_command(launcher: str, processes: int) -> list[str]:
    """The argv prefix that runs ``-m hqvae.cli`` under ``launcher`` with ``processes`` processes.

    Accelerate's route to several CPU processes is its torchrun launcher (``--multi_gpu``);
    ``accelerate launch --cpu --num_processes N`` starts one. ``--multi_gpu`` needs N >= 2."""
    if launcher == "accelerate" and processes > 1:
        # a free port of its own, as torchrun --standalone picks one: not accelerate's fixed
        # 29500, which back-to-back launches of the suite would all share
        head = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(free_port())]
    elif launcher in ("torchrun", "accelerate"):
        head = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    else:
        raise ValueError(f"unknown launcher {launcher!r}")
    return [*head, "-m", "hqvae.cli"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_env() -> dict[str, str]:
    """This environment without ACCELERATE_USE_CPU, which would make every process skip gloo setup."""
    return {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"}


def launch_failure(out) -> str:
    """What a failed launch said: its processes' own lines (where a worker failed and why),
    not only the launcher's closing traceback, which fills the end of stderr."""
    lines = (out.stdout + out.stderr).splitlines()
    worker = [line for line in lines if not line.startswith((" ", "Traceback", "torch.distributed"))]
    text = "\n".join(worker)
    return f"exit code {out.returncode}; process output (head and tail):\n{text[:3000]}\n...\n{text[-3000:]}"
