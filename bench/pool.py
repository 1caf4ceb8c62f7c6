"""Shared by the bench scripts that train many runs: run child commands a few at a time,
each writing its result as JSON, and append every finished result to a JSON-lines file at
once (so the same command run again skips what is done and continues the rest)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Job:
    key: tuple  # what the result is stored under in ``done``
    title: str  # how the job is named in progress lines
    command: list[str]  # a child that writes its result as JSON to ``out``
    out: Path
    log: Path  # the child's stdout and stderr (appended: a continued run keeps its history)


def read_results(results: Path) -> list[dict]:
    """The results recorded so far (none when the file does not exist yet)."""
    return [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []


def run_pool(jobs: list[Job], parallel: int, results: Path, done: dict, threads: int | None,
             annotate: Callable[[Job, dict], None]) -> list[str]:
    """Run ``jobs`` (in the order given) ``parallel`` at a time; each finished result gets
    ``annotate(job, result)``, goes into ``done[job.key]`` and is appended to ``results``.
    ``threads`` sets OMP_NUM_THREADS of every child. Returns the failed jobs' titles."""
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    todo, running, failed = list(jobs), {}, []
    while todo or running:
        while todo and len(running) < parallel:
            job = todo.pop(0)
            job.log.parent.mkdir(parents=True, exist_ok=True)
            print(f"== {job.title} (log: {job.log})", flush=True)
            with job.log.open("a") as log:
                proc = subprocess.Popen(job.command, env=env, stdout=log, stderr=subprocess.STDOUT)
            running[proc] = (job, time.time())
        time.sleep(2)
        for proc in [p for p in running if p.poll() is not None]:
            job, t0 = running.pop(proc)
            if proc.returncode != 0:
                failed.append(f"{job.title} (exit code {proc.returncode})")
                print(f"!! {failed[-1]}", flush=True)
                continue
            m = json.loads(job.out.read_text())
            m["wall_s"] = time.time() - t0
            annotate(job, m)
            done[job.key] = m
            with results.open("a") as fh:
                fh.write(json.dumps(m) + "\n")
            job.out.unlink()
            print(f"   {job.title}: rmse {m['rmse']:.4g} ({m['wall_s']:.0f} s)", flush=True)
    if failed:
        print("failed (run the command again to continue them): " + "; ".join(failed), flush=True)
    return failed
