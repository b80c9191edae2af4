"""Run one operation over many files: in parallel processes, with progress, a summary,
one hint per kind of failure and, with ``--json``, one result record per file on stdout.

A failing file never stops the others and never prints a traceback. Work runs in forked
processes (``--jobs``) where the platform forks; otherwise, and for one file, in-process.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from scanfort.progress import Progress, style_for

__all__ = ["Failure", "Skipped", "default_jobs", "run_batch"]

MAX_DEFAULT_JOBS = 8


class Skipped(Exception):
    """An input left alone on purpose (its output exists, it is protected already).

    ``hint`` (what to do to have it processed) is printed once after the summary.
    """

    def __init__(self, reason: str, hint: str | None = None) -> None:
        super().__init__(reason)
        self.hint = hint


@dataclass(frozen=True)
class Failure:
    """What a worker process reports for a file that failed: text and a kind for the hint."""

    message: str
    kind: str | None


@dataclass(frozen=True)
class Result:
    source: Path
    target: Path
    mode: str | None = None
    skipped: str | None = None
    skip_hint: str | None = None
    failure: Failure | None = None

    def record(self) -> dict[str, Any]:
        out: dict[str, Any] = {"input": str(self.source), "output": str(self.target)}
        if self.failure is not None:
            out.update(status="failed", error=self.failure.message)
        elif self.skipped is not None:
            out.update(status="skipped", reason=self.skipped)
        else:
            out.update(status="ok", mode=self.mode)
        return out


def default_jobs() -> int:
    """Processes for a batch: the CPUs this process may use (at most 8), 1 where no fork."""
    if "fork" not in multiprocessing.get_all_start_methods():
        return 1  # spawn would re-run a frozen binary's entry point; not worth it here
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(MAX_DEFAULT_JOBS, cpus))


# The operation a worker runs, set before the pool forks (so it is never pickled).
_OPERATION: Callable[[Path, Path], str] | None = None
_DESCRIBE: Callable[[BaseException], Failure] | None = None


def _call(source: Path, target: Path) -> tuple[str, Any]:
    assert _OPERATION is not None and _DESCRIBE is not None
    try:
        return "ok", _OPERATION(source, target)
    except Skipped as exc:
        return "skipped", (str(exc), exc.hint)
    except Exception as exc:  # reported as a Failure; never a traceback for one odd file
        return "failed", _DESCRIBE(exc)


@dataclass
class _Tally:
    verb: str
    hints: dict[str, str]
    progress: Progress
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    modes: dict[str, int] = field(default_factory=dict)
    first_skip: str | None = None
    skip_hints: list[str] = field(default_factory=list)
    _hinted: set[str] = field(default_factory=set)

    def add(self, result: Result) -> None:
        if result.failure is not None:
            self.failed += 1
            lines = [f"scanfort: error: {result.source}: {result.failure.message}"]
            kind = result.failure.kind
            if kind is not None and kind in self.hints and kind not in self._hinted:
                self._hinted.add(kind)
                lines.append(f"scanfort: hint: {self.hints[kind]}")
            self.progress.write("\n".join(lines))
        elif result.skipped is not None:
            self.skipped += 1
            if self.first_skip is None:
                self.first_skip = f"{result.source}: {result.skipped}"
            if result.skip_hint and result.skip_hint not in self.skip_hints:
                self.skip_hints.append(result.skip_hint)
        else:
            self.ok += 1
            mode = result.mode or "?"
            self.modes[mode] = self.modes.get(mode, 0) + 1

    def summary(self) -> str:
        detail = ", ".join(f"{n} {mode} mode" for mode, n in sorted(self.modes.items()))
        line = f"scanfort: {self.verb} {self.ok} file{'s' if self.ok != 1 else ''}"
        if detail:
            line += f" ({detail})"
        if self.skipped:
            line += f", skipped {self.skipped} (first: {self.first_skip})"
        if self.failed:
            line += f", {self.failed} failed"
        return line


def run_batch(items: Sequence[tuple[Path, Path]], verb: str,
              operation: Callable[[Path, Path], str],
              describe: Callable[[BaseException], Failure], hints: dict[str, str], *,
              jobs: int = 1, quiet: bool = False, as_json: bool = False, stderr: TextIO | None = None,
              stdout: TextIO | None = None) -> int:
    """Run ``operation(source, target)`` (returns the mode written) over ``items``.

    Exit code: 0 when nothing failed, 1 otherwise. Skipped inputs are counted, named in the
    summary (the first one) and followed by their hints; they do not fail the run.
    """
    global _OPERATION, _DESCRIBE
    err = stderr if stderr is not None else sys.stderr
    out = stdout if stdout is not None else sys.stdout
    progress = Progress(verb.removesuffix("ed"), len(items), err,
                        style=style_for(err, quiet=quiet, json=as_json))
    tally = _Tally(verb, hints, progress)
    results: list[Result | None] = [None] * len(items)

    def finish(index: int, answer: tuple[str, Any]) -> None:
        source, target = items[index]
        status, value = answer
        if status == "ok":
            result = Result(source, target, mode=value)
        elif status == "skipped":
            result = Result(source, target, skipped=value[0], skip_hint=value[1])
        else:
            result = Result(source, target, failure=value)
        results[index] = result
        tally.add(result)
        try:
            size = source.stat().st_size if result.failure is None else 0
        except OSError:
            size = 0
        progress.advance(nbytes=size, failed=result.failure is not None)

    _OPERATION, _DESCRIBE = operation, describe
    try:
        if jobs <= 1 or len(items) <= 1:
            for index, (source, target) in enumerate(items):
                finish(index, _call(source, target))
        else:
            context = multiprocessing.get_context("fork")
            with ProcessPoolExecutor(max_workers=min(jobs, len(items)),
                                     mp_context=context) as pool:
                futures: dict[Future[tuple[str, Any]], int] = {
                    pool.submit(_call, source, target): index
                    for index, (source, target) in enumerate(items)}
                for future in as_completed(futures):
                    index = futures[future]
                    try:
                        answer = future.result()
                    except Exception as exc:  # a worker died (killed, out of memory)
                        answer = ("failed", Failure(f"worker process failed ({type(exc).__name__})", None))
                    finish(index, answer)
    finally:
        _OPERATION = _DESCRIBE = None
        progress.close()
    err.write(tally.summary() + "\n")
    for hint in tally.skip_hints:
        err.write(f"scanfort: hint: {hint}\n")
    if as_json:
        out.write(json.dumps([r.record() for r in results if r is not None], indent=2) + "\n")
    return 1 if tally.failed else 0

