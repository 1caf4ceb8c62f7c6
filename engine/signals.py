"""Stopping a long command cleanly on SIGINT (Ctrl-C) or SIGTERM (a scheduler's pre-emption):
a training loop saves a checkpoint of its last finished step, then raises
:class:`TrainingInterrupted`; sampling finishes the batch it is writing, then raises
:class:`SamplingInterrupted`. Their message says how to go on; the CLI prints it as one line
and exits with status 130 (128 + SIGINT, the shell's convention)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Optional


class Interrupted(Exception):
    """A signal stopped a command after it kept what it had finished; the message says what
    that is and how running the command again continues (the CLI prints it, exit status 130)."""


class TrainingInterrupted(Interrupted):
    """SIGINT / SIGTERM stopped a run: a checkpoint of its last step was saved first."""

    def __init__(self, step: int, checkpoint: Path, signal_name: str):
        self.step, self.checkpoint = step, checkpoint
        super().__init__(f"{signal_name}: stopped after step {step}; checkpoint saved at {checkpoint}. "
                         f"Run the same command again to resume from it")


class SamplingInterrupted(Interrupted):
    """SIGINT / SIGTERM stopped a sample set: the samples of every finished batch are written
    and recorded, and the same command continues the set from there."""

    def __init__(self, done: int, n: int, out: Path, signal_name: str):
        self.done, self.n = done, n
        super().__init__(f"{signal_name}: stopped after {done} of {n} samples (written to {out}). "
                         f"Run the same command again to continue")


class StopSignals:
    """While installed, SIGINT / SIGTERM only raise a flag that the loop reads after each
    optimizer step (then saves a checkpoint and stops); a second signal stops at once.
    Only the main thread can install handlers: elsewhere it does nothing."""

    def __init__(self):
        self.received: Optional[str] = None
        self._old: dict = {}

    def __enter__(self):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        import signal

        self.received = signal.Signals(signum).name
        for sig, old in self._old.items():  # the next one is not deferred
            signal.signal(sig, old)

    def __exit__(self, *exc):
        import signal

        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


class SignalInterrupt(KeyboardInterrupt):
    """SIGINT or SIGTERM, raised where the process was (see :func:`interrupt_on_signals`)."""

    def __init__(self, signal_name: str):
        self.signal_name = signal_name
        super().__init__(signal_name)


@contextlib.contextmanager
def interrupt_on_signals() -> Iterator[None]:
    """While installed, SIGINT and SIGTERM raise :class:`SignalInterrupt` at once, for work
    that keeps only what it finished whole (an encoded split). Installed rather than left to
    Python's default: a process started in the background by a shell inherits SIGINT
    ignored, and SIGTERM's default ends it without a word. Main thread only."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_interrupt(signum, frame):
        raise SignalInterrupt(signal.Signals(signum).name)

    old = {sig: signal.signal(sig, raise_interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
