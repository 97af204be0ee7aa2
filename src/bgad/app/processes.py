"""Tasks run each in a child process of its own, a few at a time: a task whose process dies (killed for memory,
say) fails alone, and every child dies with the parent. ``bgad benchmark`` runs its (category, seed) tasks here,
so that the peak memory each reports is its own."""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any, TypeVar

from ..errors import BGADError

Task = TypeVar("Task")


def run_in_processes(
    tasks: Sequence[Task], jobs: int, run: Callable[[Task], Any]
) -> Iterator[tuple[Task, Any, str | None]]:
    """Run ``run(task)`` for each task in its own spawned process, ``jobs`` at a time; yield ``(task, result,
    None)`` or ``(task, None, why it failed)`` as each finishes. ``run`` and the tasks must be picklable. A
    :class:`BGADError` is the task's failure in one line; any other exception also prints its traceback."""
    context = multiprocessing.get_context("spawn")
    queue = list(tasks)
    running: dict[Any, tuple[Any, Any, Task]] = {}  # process sentinel -> (process, result pipe, task)
    outcomes: dict[Any, tuple[str, Any]] = {}
    try:
        while queue or running:
            while queue and len(running) < jobs:
                task = queue.pop(0)
                receiver, sender = context.Pipe(duplex=False)
                process = context.Process(target=_child, args=(run, task, sender, os.getpid()), daemon=True)
                process.start()
                sender.close()
                running[process.sentinel] = (process, receiver, task)
            pipes = {receiver: sentinel for sentinel, (_, receiver, _) in running.items()}
            ready = multiprocessing.connection.wait([*running, *pipes])
            for pipe in (r for r in ready if r in pipes):  # read results as they come: no child blocks on a pipe
                with suppress(EOFError):
                    outcomes[pipes[pipe]] = pipe.recv()
            for sentinel in (r for r in ready if r in running):
                process, receiver, task = running.pop(sentinel)
                process.join()
                outcome = outcomes.pop(sentinel, None)
                if outcome is None and receiver.poll():
                    with suppress(EOFError):
                        outcome = receiver.recv()
                receiver.close()
                if outcome is None:
                    yield task, None, f"its process died (exit code {process.exitcode}; out of memory?)"
                elif outcome[0] == "ok":
                    yield task, outcome[1], None
                else:
                    yield task, None, outcome[1]
    finally:
        for process, _, _ in running.values():
            process.kill()


def _child(run: Callable[[Task], Any], task: Task, sender: Any, parent: int) -> None:
    """A task's process: runs it and sends ``("ok", result)`` or ``("error", message)``."""
    die_with_parent(parent)
    try:
        outcome = ("ok", run(task))
    except BGADError as err:
        outcome = ("error", str(err))
    except Exception as err:  # a bug: its traceback goes to this process's stderr, the other tasks go on
        traceback.print_exc()
        outcome = ("error", f"{type(err).__name__}: {err}")
    sender.send(outcome)
    sender.close()


def die_with_parent(parent: int) -> None:
    """Worker start-up: on Linux, ask the kernel to kill this worker when the parent process dies (a killed
    benchmark must not leave workers writing into its run folders); elsewhere, at least not start orphaned."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)


def usable_cpus() -> int:
    """CPUs this process may use: its CPU affinity and, in a container, the cgroup's CPU quota (``os.cpu_count``
    sees neither)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass  # no cgroup v2 CPU limit readable here
    return max(1, cpus)
