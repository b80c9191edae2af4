"""Benchmark: CPU of a large instance's first frame request, before and with the stage cache.

In-process, no network: one synthetic multi-frame (512x512 16-bit frames, never real data)
is protected in DICOM mode, then, in interleaved repeats (medians of CPU seconds by
``time.process_time``, which does not count other processes' load):

- staging: the enciphered value copied to its spool while ``D`` is checked, into an unlinked
  file in ``TMPDIR`` (before) or a stage-cache file (now);
- the whole pass of the first frame request: deciphered frame by frame, the original's
  SHA-256 checked, only the frame kept (before), plus the SHA-256 of each enciphered frame
  the verified pass records (now);
- a repeated frame request: the whole pass again (before), or one frame read, its digest
  compared and deciphered (now).

    .venv/bin/python bench/bench_gateway_stage.py [--frames 256] [--repeats 5]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cipher import keys
from gateway import largeframes
from gateway.restore import Restorer, Streamed
from gateway.stagecache import StageCache
from tests import gateway_data as data


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--frames", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    identity, recipient = keys.generate_identity()
    raw = data.multiframe(data.Patient("BENCH-S", "BENCH^S", "ACCS", "20240101"), args.frames,
                          rows=512, cols=512)  # fmt: skip
    protected = data.protect(raw, recipient)
    del raw
    restorer = Restorer([identity], 1 << 20, 2)
    results: dict[str, list[float]] = {}

    def note(name: str, secs: float) -> None:
        results.setdefault(name, []).append(secs)

    with tempfile.TemporaryDirectory(prefix="sf-bench-stage-") as tmp:
        cache = StageCache(Path(tmp) / "stage", 1 << 40)
        middle = args.frames // 2
        for r in range(args.repeats):
            start = time.process_time()
            item = restorer.take(io.BytesIO(protected))
            note("staging + D: before (TMPDIR)", time.process_time() - start)
            assert isinstance(item, Streamed)
            start = time.process_time()
            largeframes.pick_frames(item, [1])
            note("first frame request's pass: before", time.process_time() - start)
            item = restorer.take(io.BytesIO(protected))
            assert isinstance(item, Streamed)
            start = time.process_time()
            largeframes.pick_frames(item, [middle])
            note("repeated frame request: before (whole pass)", time.process_time() - start)

            stage, _ = cache.acquire(f"bench-{r}")
            start = time.process_time()
            item = restorer.take(io.BytesIO(protected), cache.spool(stage))
            note("staging + D: stage cache", time.process_time() - start)
            assert isinstance(item, Streamed) and item.opened is not None
            item.close()
            cache.publish(stage, item.opened, item)
            start = time.process_time()
            largeframes.from_stage(cache, stage, [1])
            note("first frame request's pass: stage cache (verified, digests)",
                 time.process_time() - start)  # fmt: skip
            assert stage.verified
            start = time.process_time()
            largeframes.from_stage(cache, stage, [middle])
            note("repeated frame request: stage cache (one frame)", time.process_time() - start)
            cache.release(stage)
            cache.clear()
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    print(f"{args.frames} frames 512x512 16-bit, {len(protected) / 1e6:.0f} MB protected; "
          f"CPU seconds (time.process_time), medians of {args.repeats} interleaved repeats; "
          f"load average at the end {load}")  # fmt: skip
    print("| step | CPU s (median) | min | max |\n|---|---|---|---|")
    for name, values in results.items():
        print(f"| {name} | {statistics.median(values):.4f} | {min(values):.4f} | "
              f"{max(values):.4f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
