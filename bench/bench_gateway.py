"""Benchmark: retrieve through the reading gateway vs straight from Orthanc, in the same run.

Builds a synthetic 300-slice 512x512 16-bit CT series (never real data), protects it in
DICOM mode, stores it in a loopback Orthanc (DICOMweb plugin) and starts ``scanfort gateway
run`` in front of it as its own process. Then, in interleaved repeats (medians printed):

- series retrieve: one WADO-RS ``multipart/related`` GET of the whole series, read by curl
  (MB/s of DICOM);
- instance retrieve: one GET per instance, 4 client threads (MB/s);
- viewer flow: series metadata, then ``frames/1`` of every instance with 6 client threads,
  as OHIF does: time to the first and to the last frame.

Orthanc serves the protected bytes as stored; the gateway decrypts every instance (its
decrypted cache is cleared before each gateway measurement). The index is built once,
by the first search (timed separately), as the study list does before a study is opened.

    .venv/bin/python bench/bench_gateway.py [--slices 300] [--size 512] [--repeats 3]
    .venv/bin/python bench/bench_gateway.py --multiframe-mb 256   # memory: frames, retrieve

Targets (issue 12): gateway >= 0.5x Orthanc's own throughput; first image < 1 s.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.* when run as a script

from cipher import keys
from tests import gateway_data as data
from tests import peers

REPO = Path(__file__).resolve().parent.parent
PASSWORD = "bench-password-1"
DICOM = 'multipart/related; type="application/dicom"'
FRAMES = "multipart/related; type=application/octet-stream; transfer-syntax=*"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot (all cores)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])
    return (total - idle) / _TICK, total / _TICK


class Target:
    def __init__(self, name: str, root: str, auth: tuple[str, str] | None,
                 before: Callable[[], None]) -> None:  # fmt: skip
        self.name, self.root, self.auth, self.before = name, root, auth, before
        self._local = threading.local()

    def session(self) -> requests.Session:
        s = getattr(self._local, "s", None)
        if s is None:
            s = requests.Session()
            s.auth = self.auth
            self._local.s = s
        return s

    def get(self, path: str, accept: str) -> bytes:
        r = self.session().get(self.root + path, headers={"Accept": accept}, timeout=120)
        r.raise_for_status()
        return r.content


#: CPU seconds per GB of a series retrieve: (target name, process) -> samples
CPU: dict[tuple[str, str], list[float]] = {}


def series_retrieve(t: Target, study: str, series: str, count: int, scratch: Path,
                    pids: dict[str, int]) -> tuple[float, int]:  # fmt: skip
    """One series retrieve read by curl (a native client, as a browser is: the Python client
    decodes chunked transfer encoding several times slower than it reads a sized body).
    Records the CPU seconds per GB of the servers in ``pids``, of curl and of the machine."""
    t.before()
    out = scratch / "series.bin"
    before = {name: cpu_s(pid) for name, pid in pids.items()}
    child = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy0, total0 = machine_cpu()
    auth = ["-u", f"{t.auth[0]}:{t.auth[1]}"] if t.auth else []
    done = subprocess.run(
        ["curl", "-sS", "--fail", "-o", str(out), "-w", "%{size_download} %{time_total}",
         "-H", f"Accept: {DICOM}", *auth, f"{t.root}/studies/{study}/series/{series}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    busy1, total1 = machine_cpu()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    size, secs = done.stdout.split()
    gb = int(size) / 1e9
    for name, pid in pids.items():
        CPU.setdefault((t.name, name), []).append((cpu_s(pid) - before[name]) / gb)
    curl = after.ru_utime + after.ru_stime - child.ru_utime - child.ru_stime
    CPU.setdefault((t.name, "curl"), []).append(curl / gb)
    CPU.setdefault((t.name, "machine busy"), []).append((busy1 - busy0) / gb)
    CPU.setdefault((t.name, "machine busy %"), []).append(
        100 * (busy1 - busy0) / max(1e-9, total1 - total0))
    parts = out.read_bytes().count(b"\r\nContent-Type: application/dicom")
    out.unlink()
    if parts != count:
        raise SystemExit(f"{t.name}: {parts} instances in the series retrieve, not {count}")
    return float(secs), int(size)


def instance_retrieve(t: Target, study: str, series: str, sops: list[str]) -> tuple[float, int]:
    t.before()
    start = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        sizes = list(pool.map(lambda s: len(t.get(
            f"/studies/{study}/series/{series}/instances/{s}", DICOM)), sops))  # fmt: skip
    return time.perf_counter() - start, sum(sizes)


def viewer_flow(t: Target, study: str, series: str, sops: list[str]) -> tuple[float, float]:
    t.before()
    start = time.perf_counter()
    t.get(f"/studies/{study}/series/{series}/metadata", "application/dicom+json")
    done: list[float] = []
    lock = threading.Lock()

    def frame(sop: str) -> None:
        t.get(f"/studies/{study}/series/{series}/instances/{sop}/frames/1", FRAMES)
        with lock:
            done.append(time.perf_counter() - start)

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(frame, sops))
    return min(done), max(done)


def _start_gateway(work: Path, upstream: str, identity: str, timeout_s: float = 0,
                   repo: Path = REPO) -> tuple[subprocess.Popen[bytes], int]:  # fmt: skip
    (work / "site.key").write_text(identity + "\n")
    env = {**os.environ, "PYTHONPATH": str(repo), "SCANFORT_GATEWAY_PASSWORD": PASSWORD}
    subprocess.run([sys.executable, "-m", "scanfort", "gateway", "init", "--data-dir",
                    str(work / "gw"), "--identity", str(work / "site.key"), "--upstream", upstream],
                   check=True, env=env, capture_output=True, cwd=repo)  # fmt: skip
    if timeout_s:  # a very large instance: the archive may take long to start answering
        toml = work / "gw" / "gateway.toml"
        toml.write_text(re.sub(r"(?m)^upstream_timeout_s = .*$",
                               f"upstream_timeout_s = {timeout_s}", toml.read_text()))
    port = peers.free_port()
    proc = subprocess.Popen([sys.executable, "-m", "scanfort", "gateway", "run", "--data-dir",
                             str(work / "gw"), "--port", str(port), "--log-level", "warning"],
                            env=env, cwd=repo)  # fmt: skip
    peers.wait_for_port(port, proc)
    return proc, port


def _vm(pid: int, key: str) -> int:
    """A /proc/PID/status figure in MB (VmRSS, VmHWM)."""
    line = next(ln for ln in Path(f"/proc/{pid}/status").read_text().splitlines()
                if ln.startswith(key))  # fmt: skip
    return int(line.split()[1]) // 1024


def multiframe_memory(mb: int, repo: Path = REPO) -> int:
    """A fresh gateway process (from ``repo``) serving one multi-frame instance of ``mb``
    MB: frames (the first request, then repeated ones), instance metadata, the Pixel Data
    bulk data, then the whole instance; time, gateway CPU and peak RSS of each step."""
    import hashlib
    identity, recipient = keys.generate_identity()
    patient = data.Patient("BENCH-MF", "BENCH^MF", "ACCMF", "20240101")
    frames = max(1, mb * 1024 * 1024 // (512 * 512 * 2))
    raw = data.multiframe(patient, frames, rows=512, cols=512)
    pixel_sha = hashlib.sha256(memoryview(raw)[-frames * 512 * 512 * 2:]).hexdigest()
    protected = data.protect(raw, recipient)
    study, series, sop = data.uids(raw)
    del raw
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    steps: list[tuple[str, float, float, int, str]] = []  # what, s, gateway CPU s, VmHWM, note
    with tempfile.TemporaryDirectory(prefix="sf-bench-mf-") as tmp:
        work = Path(tmp)
        with peers.start_orthanc(work / "orthanc") as orthanc:
            orthanc.upload(protected)
            size = len(protected)
            del protected
            start = time.perf_counter()
            with requests.get(f"{orthanc.dicomweb_url}/studies/{study}/series/{series}/instances/"
                              f"{sop}", headers={"Accept": DICOM}, stream=True, timeout=600) as r:
                r.raise_for_status()
                chunks = r.iter_content(1 << 20)
                direct = len(next(chunks))
                direct_first = time.perf_counter() - start
                direct += sum(len(c) for c in chunks)
            direct_s = time.perf_counter() - start
            proc, port = _start_gateway(work, orthanc.dicomweb_url, identity, timeout_s=600,
                                        repo=repo)  # fmt: skip
            root = (f"http://127.0.0.1:{port}/dicom-web/studies/{study}/series/{series}"
                    f"/instances/{sop}")  # fmt: skip

            def step(what: str, url: str, accept: str, note: str = "") -> bytes:
                cpu0, t0 = cpu_s(proc.pid), time.perf_counter()
                with requests.get(url, auth=("admin", PASSWORD), headers={"Accept": accept},
                                  stream=True, timeout=600) as r:  # fmt: skip
                    r.raise_for_status()
                    digest, n = hashlib.sha256(), 0
                    for chunk in r.iter_content(1 << 20):
                        digest.update(chunk)
                        n += len(chunk)
                body_note = note or f"{n / 1e6:.1f} MB"
                steps.append((what, time.perf_counter() - t0, cpu_s(proc.pid) - cpu0,
                              _vm(proc.pid, "VmHWM"), body_note))  # fmt: skip
                return digest.hexdigest().encode()

            try:
                before = _vm(proc.pid, "VmHWM")
                # frames as a viewer asks for them: the first request fetches (and, with the
                # stage cache, proves) the instance; the others show what a repeat costs
                spread = [1, frames // 2 + 1, frames, 2, frames // 4 + 1, 3 * frames // 4 + 1]
                for i, n in enumerate(spread):
                    step("frame (first request)" if i == 0 else "frame (repeated)",
                         f"{root}/frames/{n}", FRAMES, f"frame {n}")  # fmt: skip
                frames_peak = _vm(proc.pid, "VmHWM")
                step("instance metadata", f"{root}/metadata", "application/dicom+json")
                got = step("bulk data 7FE00010 (Pixel Data)", f"{root}/bulkdata/7FE00010",
                           "application/octet-stream")  # fmt: skip
                bulk_ok = got.decode() == pixel_sha
                step("instance retrieve", root, DICOM)
                peak = _vm(proc.pid, "VmHWM")
            finally:
                proc.terminate()
                proc.wait(10)
    print(f"CPU: {cpu_model()} ({os.cpu_count()} cores); kernel {platform.release()}; "
          f"Python {platform.python_version()}; load average at start {load}; gateway from "
          f"{repo}")  # fmt: skip
    print(f"multi-frame: {frames} frames 512x512 16-bit, {size / 1e6:.0f} MB protected; "
          f"Orthanc served {direct / 1e6:.0f} MB in {direct_s:.1f} s (first byte "
          f"{direct_first:.1f} s); gateway peak RSS {before} MB at start, {frames_peak} MB "
          f"after the frames (+{frames_peak - before} MB), {peak} MB at the end "
          f"(+{peak - before} MB = {(peak - before) / (size / 2**20):.2f}x the instance; "
          f"target well under 1x); Pixel Data bulk data equal to the original's: {bulk_ok}")
    print("| step | wall s | gateway CPU s | gateway VmHWM MB | |\n|---|---|---|---|---|")
    for what, secs, cpu, hwm, note in steps:
        print(f"| {what} | {secs:.2f} | {cpu:.2f} | {hwm} | {note} |")
    repeated = [s[1] for s in steps if s[0] == "frame (repeated)"]
    repeated_cpu = [s[2] for s in steps if s[0] == "frame (repeated)"]
    if repeated:
        print(f"repeated frame requests: median {statistics.median(repeated):.3f} s wall, "
              f"{statistics.median(repeated_cpu):.3f} s gateway CPU")  # fmt: skip
    return 0


#: The name of the gateway run from ``--compare-repo`` in the tables.
COMPARED = "compared gateway"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--series-only", action="store_true",
                        help="only the series retrieve (quicker, for comparing changes)")
    parser.add_argument("--multiframe-mb", type=int, default=0, metavar="MB",
                        help="instead: one multi-frame of this size (frames, metadata, bulk "
                        "data, retrieve: time, gateway CPU, peak RSS)")
    parser.add_argument("--gateway-repo", type=Path, default=REPO, metavar="DIR",
                        help="with --multiframe-mb: run the gateway from this checkout "
                        "(e.g. main, for a before/after in the same session)")
    parser.add_argument("--compare-repo", type=Path, default=None, metavar="DIR",
                        help="with --series-only: also a gateway run from this checkout (e.g. "
                        "main) in front of the same Orthanc, its series retrieves interleaved "
                        "with the others (a before/after on the same data and load)")
    args = parser.parse_args()
    if args.compare_repo is not None and not args.series_only:
        parser.error("--compare-repo goes with --series-only")
    if args.multiframe_mb:
        return multiframe_memory(args.multiframe_mb, args.gateway_repo.resolve())
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    identity, recipient = keys.generate_identity()
    patient = data.Patient("BENCH-1", "BENCH^CT", "ACCB1", "20240101")
    t0 = time.perf_counter()
    series = data.ct_series(patient, args.slices, rows=args.size, cols=args.size)
    protected = [data.protect(raw, recipient) for raw in series]
    prep = time.perf_counter() - t0
    study, series_uid, _ = data.uids(series[0])
    sops = [data.sop_uid(raw) for raw in series]
    dicom_mb = sum(len(p) for p in protected) / 1e6
    compared: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="sf-bench-gw-") as tmp:
        work = Path(tmp)
        with peers.start_orthanc(work / "orthanc", extra_config={"HttpThreadsCount": 8}) as orthanc:
            for raw in protected:
                orthanc.upload(raw)
            (work / "site.key").write_text(identity + "\n")
            env = {**os.environ, "PYTHONPATH": str(REPO), "SCANFORT_GATEWAY_PASSWORD": PASSWORD}
            subprocess.run([sys.executable, "-m", "scanfort", "gateway", "init", "--data-dir",
                            str(work / "gw"), "--identity", str(work / "site.key"),
                            "--upstream", orthanc.dicomweb_url],
                           check=True, env=env, capture_output=True, cwd=REPO)  # fmt: skip
            port = peers.free_port()
            proc = subprocess.Popen([sys.executable, "-m", "scanfort", "gateway", "run",
                                     "--data-dir", str(work / "gw"), "--port", str(port),
                                     "--log-level", "warning"], env=env, cwd=REPO)  # fmt: skip
            try:
                peers.wait_for_port(port, proc)
                gw_url = f"http://127.0.0.1:{port}"
                auth = ("admin", PASSWORD)

                def clear() -> None:
                    requests.post(gw_url + "/admin/cache/clear", auth=auth, timeout=30)

                pids = {"Orthanc": orthanc.process.pid, "gateway": proc.pid}
                orthanc_t = Target("Orthanc", orthanc.dicomweb_url, None, lambda: None)
                gateway_t = Target("gateway", gw_url + "/dicom-web", auth, clear)
                start = time.perf_counter()
                r = requests.get(gw_url + "/dicom-web/studies", params={"PatientID": "BENCH-1"},
                                 auth=auth, timeout=600)  # fmt: skip
                r.raise_for_status()
                index_s = time.perf_counter() - start
                targets = [orthanc_t, gateway_t]
                target_pids = {t.name: pids for t in targets}
                if args.compare_repo is not None:
                    (work / "compare").mkdir()
                    other, other_port = _start_gateway(work / "compare", orthanc.dicomweb_url,
                                                       identity, repo=args.compare_repo.resolve())
                    compared.append(other)
                    other_url = f"http://127.0.0.1:{other_port}"
                    requests.get(other_url + "/dicom-web/studies", auth=auth, timeout=600,
                                 params={"PatientID": "BENCH-1"}).raise_for_status()  # fmt: skip

                    def clear_other() -> None:
                        requests.post(other_url + "/admin/cache/clear", auth=auth, timeout=30)

                    other_t = Target(COMPARED, other_url + "/dicom-web", auth, clear_other)
                    targets.append(other_t)
                    target_pids[COMPARED] = {"Orthanc": orthanc.process.pid, "gateway": other.pid}
                results: dict[str, dict[str, list[float]]] = {
                    t.name: {"series": [], "instances": [], "first": [], "last": []}
                    for t in targets
                }
                for _ in range(args.repeats):
                    for t in targets:  # interleaved
                        secs, size = series_retrieve(t, study, series_uid, len(sops), work,
                                                     target_pids[t.name])  # fmt: skip
                        results[t.name]["series"].append(size / 1e6 / secs)
                        if args.series_only:
                            continue
                        secs, size = instance_retrieve(t, study, series_uid, sops)
                        results[t.name]["instances"].append(size / 1e6 / secs)
                        first, last = viewer_flow(t, study, series_uid, sops)
                        results[t.name]["first"].append(first)
                        results[t.name]["last"].append(last)
                rss_kb = int(next(ln.split()[1] for ln in
                                  Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                                  if ln.startswith("VmHWM")))  # fmt: skip
            finally:
                for p in (proc, *compared):
                    p.terminate()
                    p.wait(10)
    med = {n: {k: statistics.median(v) if v else float("nan") for k, v in r.items()}
           for n, r in results.items()}  # fmt: skip
    o, g = med["Orthanc"], med["gateway"]
    ratios = [gs / os_ for gs, os_ in zip(results["gateway"]["series"],
                                          results["Orthanc"]["series"], strict=True)]
    print(f"CPU: {cpu_model()} ({os.cpu_count()} cores); kernel {platform.release()}; "
          f"Python {platform.python_version()}; load average at start {load}")  # fmt: skip
    print(f"series: {args.slices} slices {args.size}x{args.size} 16-bit, {dicom_mb:.1f} MB "
          f"protected (built and protected in {prep:.1f} s); medians of {args.repeats} "
          "interleaved repeats; client, Orthanc and gateway on the same machine")  # fmt: skip
    print(f"first search (index of the study built: {args.slices} instances decrypted): "
          f"{index_s:.2f} s; gateway peak RSS {rss_kb / 1024:.0f} MB")  # fmt: skip
    print("series retrieve per repeat, MB/s: Orthanc "
          + " ".join(f"{v:.0f}" for v in results["Orthanc"]["series"]) + "; gateway "
          + " ".join(f"{v:.0f}" for v in results["gateway"]["series"]) + "; ratio "
          + " ".join(f"{v:.2f}" for v in ratios))  # fmt: skip
    print()
    print("| measure | Orthanc (protected bytes) | gateway (decrypted) | gateway / Orthanc "
          "| target |")  # fmt: skip
    print("|---|---|---|---|---|")
    print(f"| series retrieve, MB/s | {o['series']:.1f} | {g['series']:.1f} | "
          f"{g['series'] / o['series']:.2f}x (per repeat: median {statistics.median(ratios):.2f}x,"
          f" min {min(ratios):.2f}x) | >= 0.5x |")  # fmt: skip
    if COMPARED in med:
        c_ratios = [cs / os_ for cs, os_ in zip(results[COMPARED]["series"],
                                                results["Orthanc"]["series"], strict=True)]
        print(f"| series retrieve, MB/s, {COMPARED} ({args.compare_repo}) | "
              f"{o['series']:.1f} | {med[COMPARED]['series']:.1f} | "
              f"{med[COMPARED]['series'] / o['series']:.2f}x (per repeat: median "
              f"{statistics.median(c_ratios):.2f}x, min {min(c_ratios):.2f}x; per repeat MB/s "
              + " ".join(f"{v:.0f}" for v in results[COMPARED]["series"]) + ") | >= 0.5x |")
    if not args.series_only:
        print(f"| instance retrieve (4 threads), MB/s | {o['instances']:.1f} | "
              f"{g['instances']:.1f} | {g['instances'] / o['instances']:.2f}x | >= 0.5x |")
        print(f"| viewer flow: first frame, s | {o['first']:.3f} | {g['first']:.3f} | "
              f"{g['first'] / o['first']:.2f}x | < 1 s |")  # fmt: skip
        print(f"| viewer flow: last frame, s | {o['last']:.2f} | {g['last']:.2f} | "
              f"{g['last'] / o['last']:.2f}x | |")  # fmt: skip
    print()
    print("CPU seconds per GB delivered during the series retrieve (medians; 2 cores give "
          "at most 2 s of CPU per second):")  # fmt: skip
    print("| serving | Orthanc process | gateway process | curl | whole machine | "
          "machine busy |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for name in ("Orthanc", "gateway", COMPARED):
        c = {k: statistics.median(v) for (n, k), v in CPU.items() if n == name}
        if not c:
            continue
        print(f"| {name} | {c['Orthanc']:.2f} | {c['gateway']:.2f} | {c['curl']:.2f} | "
              f"{c['machine busy']:.2f} | {c['machine busy %']:.0f} % |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
