"""Peak memory of file-mode protection on a large file: bounded by the chunk, not the file.

Each operation runs in a fresh subprocess that reports its own peak resident set size
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``) and wall time; the table compares them
with two references measured in the same run: an idle interpreter that imported
``cipher`` (the floor) and a plain 1 MiB-buffer copy of the same file. Two sizes are
measured so the table shows that peak memory does not grow with the input.

    .venv/bin/python bench/bench_stream.py              # 1 GiB and 64 MiB
    .venv/bin/python bench/bench_stream.py --size-mb 256

Not a test: nothing here asserts on time or memory.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

_BLOCK = 8 << 20


def _peak_mib() -> float:
    # ru_maxrss is KiB on Linux (bytes on macOS).
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1 << 20) if sys.platform == "darwin" else rss / 1024


def _child(op: str, src: str, dst: str, key: str) -> None:
    import cipher
    from cipher import fileformat

    start = time.perf_counter()
    if op == "idle":
        pass
    elif op == "copy":
        with open(src, "rb") as f, open(dst, "wb") as g:
            shutil.copyfileobj(f, g, 1 << 20)
    elif op == "encrypt":
        chunk = int(os.environ.get("BENCH_CHUNK", fileformat.DEFAULT_CHUNK_SIZE))
        with open(src, "rb") as f, open(dst, "wb") as g:
            fileformat.protect_file(f, g, [key], chunk_size=chunk)
    elif op == "decrypt":
        with open(src, "rb") as f, open(dst, "wb") as g:
            cipher.unprotect(f, g, [key])
    else:
        raise SystemExit(f"unknown op {op}")
    seconds = time.perf_counter() - start
    print(json.dumps({"peak_mib": _peak_mib(), "seconds": seconds}))


def _run(op: str, src: Path, dst: Path, key: str, env: dict[str, str]) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", op, str(src), str(dst), key],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _make_input(path: Path, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            block = os.urandom(min(_BLOCK, left))
            f.write(block)
            h.update(block)
            left -= len(block)
    return h.hexdigest()


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)
    return h.hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size-mb", type=int, action="append", help="input sizes (MiB)")
    parser.add_argument("--dir", help="scratch directory (default: system temp)")
    parser.add_argument(
        "--child", nargs=4, metavar=("OP", "SRC", "DST", "KEY"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.child:
        _child(*args.child)
        return 0

    from cipher import fileformat, keys

    sizes = args.size_mb or [1024, 64]
    identity, recipient = keys.generate_identity()
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    rows: list[tuple[str, int, float, float, float]] = []
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="scanfort-bench-") as tmp:
        work = Path(tmp)
        idle = _run("idle", work / "-", work / "-", recipient, env)
        for size_mb in sizes:
            size = size_mb << 20
            plain, sealed, back = work / "plain.bin", work / "plain.bin.age", work / "back.bin"
            want = _make_input(plain, size)
            for op, src, dst, key in (
                ("copy", plain, back, recipient),
                ("encrypt", plain, sealed, recipient),
                ("decrypt", sealed, back, identity),
            ):
                r = _run(op, src, dst, key, env)
                rows.append(
                    (op, size_mb, r["peak_mib"], r["peak_mib"] - idle["peak_mib"], r["seconds"])
                )
            if _digest(back) != want:
                print("error: decrypted output differs from the input", file=sys.stderr)
                return 1
            for p in (plain, sealed, back):
                p.unlink()

    chunk_mib = fileformat.DEFAULT_CHUNK_SIZE / (1 << 20)
    print(
        f"file mode, chunk {chunk_mib:g} MiB; idle interpreter with cipher imported: "
        f"{idle['peak_mib']:.1f} MiB peak RSS"
    )
    print(
        f"{'operation':<10} {'input MiB':>10} {'peak RSS MiB':>13} {'over idle':>10} "
        f"{'seconds':>8} {'MiB/s':>8} {'RSS/copy':>9}"
    )
    copy_peak = {size: peak for op, size, peak, _, _ in rows if op == "copy"}
    for op, size_mb, peak, over, seconds in rows:
        rate = size_mb / seconds if seconds > 0 else float("inf")
        print(
            f"{op:<10} {size_mb:>10} {peak:>13.1f} {over:>10.1f} {seconds:>8.2f} "
            f"{rate:>8.1f} {peak / copy_peak[size_mb]:>9.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
