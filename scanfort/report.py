"""``scanfort cipher-report``: the published method's results table, for our cipher.

Runs on pydicom's bundled images and a synthetic 512×512 phantom when no files are given,
or on the pixel data of the given DICOM files. Measures entropy, chi-square, NPCR/UACI at
the first, middle, last and a random pixel (with Wu et al. critical values), adjacent-pixel
correlation (all pairs, plain vs cipher), key and nonce sensitivity, S-box NL/SAC/BIC/DU/LP,
encrypt/decrypt speed per image (the kernel ``chaos.encrypt`` runs in this process) and
per kernel on a CT slice and a radiograph against AES-256-GCM (as ``scanfort bench``,
shorter runs). The report names the CPU and the kernel that ran, and whether it is
constant time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cipher import chaos
from scanfort import analysis
from scanfort.progress import Progress, style_for

BUNDLED = ("CT_small.dcm", "MR_small.dcm", "SC_rgb_small_odd.dcm", "SC_rgb_rle_2frame.dcm", "rtdose_1frame.dcm")
NPCR_TRIALS = 16


def phantom(size: int = 512, dtype: type = np.uint8) -> np.ndarray:
    """A synthetic head phantom: nested ellipses on a black border (no patient data)."""
    y, x = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]
    img = np.zeros((size, size))
    for cx, cy, ax, ay, val in (
        (0, 0, 0.69, 0.92, 1.0),
        (0, -0.0184, 0.6624, 0.874, -0.8),
        (0.22, 0, 0.11, 0.31, -0.2),
        (-0.22, 0, 0.16, 0.41, -0.2),
        (0, 0.35, 0.21, 0.25, 0.1),
        (0, 0.1, 0.046, 0.046, 0.1),
        (-0.08, -0.605, 0.046, 0.023, 0.1),
    ):
        img[((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 <= 1] += val
    img += np.random.default_rng(7).normal(0, 0.01, img.shape)
    top = 255 if dtype == np.uint8 else 4095
    return np.clip(img / max(img.max(), 1e-9) * top, 0, top).astype(dtype)


def _as_unsigned(arr: np.ndarray) -> np.ndarray:
    if arr.dtype.kind == "i" and arr.dtype.itemsize in (1, 2):
        return arr.view(arr.dtype.str.replace("i", "u"))
    if arr.dtype.kind == "u" and arr.dtype.itemsize in (1, 2):
        return arr
    raise ValueError(f"{arr.dtype.itemsize * 8}-bit pixels: the chaos cipher takes 8/16-bit images (DICOM mode encrypts other Pixel Data as bytes)")


def load_images(files: Sequence[str]) -> tuple[list[tuple[str, np.ndarray]], list[str]]:
    """(label, pixels) for each usable file, and one message per file that was skipped.

    Defaults: a synthetic phantom (8- and 12-bit) and pydicom's bundled images.
    """
    import pydicom
    from pydicom.data import get_testdata_file

    out: list[tuple[str, np.ndarray]] = []
    skipped: list[str] = []
    paths: list[tuple[str, str]] = []
    if files:
        paths = [(Path(f).name, f) for f in files]
    else:
        out.append(("phantom 512x512 8-bit", phantom()))
        out.append(("phantom 512x512 12-bit", phantom(dtype=np.uint16)))
        for name in BUNDLED:
            found = get_testdata_file(name, download=False)
            if found is not None:
                paths.append((f"pydicom {name}", str(found)))
    for label, path in paths:
        try:
            ds = pydicom.dcmread(path)
            out.append((label, _as_unsigned(np.ascontiguousarray(ds.pixel_array))))
        except (OSError, ValueError, AttributeError, pydicom.errors.InvalidDicomError, RuntimeError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            skipped.append(f"{label}: {reason}")
    return out, skipped


def _key(label: str, i: int = 0) -> tuple[bytes, bytes]:
    h = hashlib.sha256(f"report {label} {i}".encode()).digest()
    return h, hashlib.sha256(h).digest()[:16]


def _timed(fn: Any, *args: Any, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - t)
    return best


def image_report(label: str, img: np.ndarray) -> dict[str, Any]:
    key, nonce = _key(label)
    ct = chaos.encrypt(img, key, nonce)
    assert np.array_equal(chaos.decrypt(ct, key, nonce), img), "decrypt is not exact"
    levels = 1 << (8 * img.dtype.itemsize)
    pixels = img.size
    flat = img.reshape(-1)
    positions = {"first": 0, "middle": pixels // 2, "last": pixels - 1, "random": int(np.random.default_rng(1).integers(pixels))}
    diff: dict[str, Any] = {}
    for name, idx in positions.items():
        flipped = flat.copy()
        flipped[idx] ^= 1
        changed = flipped.reshape(img.shape)
        trials = [
            analysis.npcr_uaci(chaos.encrypt(img, *_key(label, t)), chaos.encrypt(changed, *_key(label, t)))
            for t in range(NPCR_TRIALS)
        ]
        diff[name] = {
            "npcr": trials[0][0],
            "uaci": trials[0][1],
            "npcr_mean": float(np.mean([t[0] for t in trials])),
            "uaci_mean": float(np.mean([t[1] for t in trials])),
            "trials": NPCR_TRIALS,
        }
    key2 = bytes([key[0] ^ 1]) + key[1:]
    nonce2 = bytes([nonce[0] ^ 1]) + nonce[1:]
    enc_s = _timed(chaos.encrypt, img, key, nonce)
    dec_s = _timed(chaos.decrypt, ct, key, nonce)
    lo, hi = analysis.uaci_critical(pixels, levels)
    return {
        "image": label,
        "shape": list(img.shape),
        "dtype": str(img.dtype),
        "entropy_plain": analysis.entropy(img),
        "entropy_cipher": analysis.entropy(ct),
        "chi2_cipher": analysis.chi_square(ct),
        "chi2_critical": analysis.CHI2_CRITICAL,
        "correlation_plain": analysis.correlations(img),
        "correlation_cipher": analysis.correlations(ct),
        "npcr_critical": analysis.npcr_critical(pixels, levels),
        "uaci_critical": [lo, hi],
        "differential": diff,
        "key_sensitivity_npcr": analysis.npcr_uaci(ct, chaos.encrypt(img, key2, nonce))[0],
        "nonce_sensitivity_npcr": analysis.npcr_uaci(ct, chaos.encrypt(img, key, nonce2))[0],
        "wrong_key_decrypt_npcr": analysis.npcr_uaci(img, chaos.decrypt(ct, key2, nonce))[0],
        "encrypt_ms": enc_s * 1e3,
        "decrypt_ms": dec_s * 1e3,
        "encrypt_mb_s": img.nbytes / enc_s / 1e6,
        "decrypt_mb_s": img.nbytes / dec_s / 1e6,
    }


def sbox_report(samples: int = 8) -> dict[str, Any]:
    stats = [analysis.sbox_stats(chaos.sbox(*_key("sbox", i))) for i in range(samples)]
    rows = [dataclasses.asdict(s) for s in stats]
    return {"samples": samples, "per_sbox": rows, "distinct": len({chaos.sbox(*_key("sbox", i)).tobytes() for i in range(samples)})}


SPEED_MIN_TIME = 0.1  # seconds of interleaved repeats per case of the per-kernel speed table


def build(files: Sequence[str], progress: Progress | None = None) -> dict[str, Any]:
    """The report; ``progress`` counts its steps (each image, the S-boxes, the speed table)."""
    from scanfort import benchmark

    loaded, skipped = load_images(files)
    if progress is not None:
        progress.total = len(loaded) + 2
    images = []
    for label, img in loaded:
        images.append(image_report(label, img))
        if progress is not None:
            progress.advance()
    sboxes = sbox_report()
    if progress is not None:
        progress.advance()
    speed = benchmark.run(SPEED_MIN_TIME, min_runs=3)
    if progress is not None:
        progress.advance()
    return {
        "skipped": skipped,
        "cipher": "scanfort chaos v1",
        "kernel": chaos.kernel(),  # what chaos.encrypt ran on above, e.g. "aesni-avx2"
        "constant_time": chaos.constant_time(chaos.kernel()),
        "cpu": benchmark.cpu_model(),
        "images": images,
        "sbox": sboxes,
        "speed": speed,
    }


def _fmt_corr(c: dict[str, float]) -> str:
    return " ".join(f"{v:+.4f}" for v in (c["horizontal"], c["vertical"], c["diagonal"]))


def render(report: dict[str, Any]) -> str:
    ct = "constant time" if report["constant_time"] else "NOT constant time"
    lines = [f"ScanFort chaos cipher v1 — statistics report (kernel: {report['kernel']}, {ct}; CPU: {report['cpu']})", ""]
    hdr = f"{'image':28} {'shape':>13} {'H(plain)':>8} {'H(ciph)':>8} {'chi2':>7} {'enc ms':>8} {'enc MB/s':>9} {'dec MB/s':>9}"
    lines += [hdr, "-" * len(hdr)]
    for r in report["images"]:
        shape = "x".join(map(str, r["shape"]))
        lines.append(
            f"{r['image'][:28]:28} {shape:>13} {r['entropy_plain']:8.4f} {r['entropy_cipher']:8.4f} "
            f"{r['chi2_cipher']:7.1f} {r['encrypt_ms']:8.2f} {r['encrypt_mb_s']:9.1f} {r['decrypt_mb_s']:9.1f}"
        )
    lines += ["", f"chi-square critical value (255 dof, α=0.05): {analysis.CHI2_CRITICAL}", ""]
    lines.append("Adjacent-pixel correlation, all pairs (H V D)")
    for r in report["images"]:
        lines.append(f"  {r['image'][:28]:28} plain {_fmt_corr(r['correlation_plain'])}   cipher {_fmt_corr(r['correlation_cipher'])}")
    lines += ["", f"One-bit change: NPCR/UACI % (first key; mean of {NPCR_TRIALS} keys in brackets)"]
    for r in report["images"]:
        lo, hi = r["uaci_critical"]
        lines.append(f"  {r['image'][:28]:28} critical NPCR >= {r['npcr_critical']:.4f}, UACI in [{lo:.4f}, {hi:.4f}]")
        for pos, d in r["differential"].items():
            ok = d["npcr_mean"] >= r["npcr_critical"] and lo <= d["uaci_mean"] <= hi
            lines.append(
                f"    {pos:7} NPCR {d['npcr']:8.4f} [{d['npcr_mean']:8.4f}]  UACI {d['uaci']:8.4f} [{d['uaci_mean']:8.4f}]  {'pass' if ok else 'FAIL'}"
            )
    lines += ["", "Key / nonce sensitivity (NPCR % between cipher images, one bit flipped)"]
    for r in report["images"]:
        lines.append(
            f"  {r['image'][:28]:28} key {r['key_sensitivity_npcr']:8.4f}  nonce {r['nonce_sensitivity_npcr']:8.4f}  wrong-key decrypt differs {r['wrong_key_decrypt_npcr']:8.4f}"
        )
    for msg in report["skipped"]:
        lines.append(f"skipped {msg}")
    sb = report["sbox"]
    lines += ["", f"S-boxes ({sb['samples']} image keys, {sb['distinct']} distinct)", f"  {'#':>2} {'bij':>4} {'NL':>4} {'SAC':>7} {'SAC range':>13} {'BIC-NL':>7} {'BIC-SAC':>8} {'DU':>3} {'LP':>8}"]
    for i, s in enumerate(sb["per_sbox"]):
        lines.append(
            f"  {i:2} {'yes' if s['bijective'] else 'NO':>4} {s['nonlinearity']:4} {s['sac_mean']:7.4f} {s['sac_min']:6.4f}-{s['sac_max']:6.4f} {s['bic_nl']:7} {s['bic_sac']:8.4f} {s['du']:3} {s['lp']:8.4f}"
        )
    lines.append("  (AES optimum: NL 112, DU 4, LP 16/256 = 0.0625; published method: 2-4 s per image)")
    lines += ["", "Speed per kernel (single thread, fresh key per image, setup included; medians of short interleaved runs; * = not constant time)"]
    lines.append(f"  {'case':26} {'operation':20} {'kernel':13} {'ms':>9} {'MB/s':>9} {'x AES-GCM':>10}")
    for r in report["speed"]:
        kernel = r["kernel"] + ("" if r["constant_time"] else "*")
        lines.append(f"  {r['case']:26} {r['what']:20} {kernel:13} {r['ms']:9.2f} {r['mb_s']:9.1f} {r['vs_aes']:10.3f}")
    return "\n".join(lines)


def main(files: Sequence[str], as_json: bool) -> int:
    """Print the report; exit 1 when a given file could not be used (the rest is reported)."""
    progress = Progress("cipher-report", 3, sys.stderr, unit="steps",
                        style=style_for(sys.stderr, json=as_json))
    try:
        report = build(files, progress)
    finally:
        progress.close()
    print(json.dumps(report, indent=1) if as_json else render(report))
    if files and report["skipped"]:
        for msg in report["skipped"]:
            sys.stderr.write(f"scanfort: error: {msg}\n")
        return 1
    return 0
