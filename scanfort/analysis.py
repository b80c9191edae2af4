"""Statistics of S-boxes and cipher images (pure numpy; used by the report and the tests).

S-box measures follow the usual definitions: nonlinearity from the Walsh–Hadamard
spectrum of every non-zero component function, strict avalanche (SAC) and bit
independence (BIC) matrices, differential uniformity (DU) from the difference
distribution table and the maximal linear probability (LP). Image measures are those of
the chaos-image-cipher literature: entropy, chi-square, NPCR/UACI with the critical values
of Wu, Noonan & Agaian (2011), adjacent-pixel correlation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# NPCR/UACI critical values for 8-bit 512×512 images, α = 0.05 (Wu, Noonan & Agaian 2011).
NPCR_CRITICAL_512 = 99.5893
UACI_CRITICAL_512 = (33.3730, 33.5541)


@dataclass(frozen=True)
class SboxStats:
    bijective: bool
    nonlinearity: int  # minimum over component functions
    sac_mean: float  # mean of the SAC matrix (ideal 0.5)
    sac_min: float
    sac_max: float
    bic_nl: int  # minimum nonlinearity of XORs of two output bits
    bic_sac: float  # mean SAC of XORs of two output bits (ideal 0.5)
    du: int  # differential uniformity
    lp: float  # maximal linear probability (bias convention: 16/256 for AES)


def _bits(values: np.ndarray) -> np.ndarray:
    """uint8[N] → uint8[N, 8], bit 0 first."""
    return np.unpackbits(values.astype(np.uint8)[:, None], axis=1, bitorder="little")


def _walsh(f: np.ndarray) -> np.ndarray:
    """Walsh–Hadamard transform of boolean functions, rows of ``f`` (0/1, length 256)."""
    w = (1 - 2 * f.astype(np.int64)).copy()
    h = 1
    while h < w.shape[-1]:
        w = w.reshape(*w.shape[:-1], -1, 2, h)
        a, b = w[..., 0, :].copy(), w[..., 1, :].copy()
        w[..., 0, :], w[..., 1, :] = a + b, a - b
        w = w.reshape(*w.shape[:-3], -1)
        h *= 2
    return w


def sbox_stats(s: np.ndarray) -> SboxStats:
    s = np.asarray(s, dtype=np.uint8)
    x = np.arange(256, dtype=np.uint8)
    # component functions b·S(x) for b = 1..255
    parity = (_bits(np.arange(256, dtype=np.uint8)).sum(axis=1) & 1).astype(np.uint8)
    comps = parity[np.arange(1, 256)[:, None] & s[None, :].astype(np.int64)]
    walsh = np.abs(_walsh(comps))
    nl = int(128 - walsh.max() // 2)
    lp = float(walsh.max() / 2 / 256.0)  # max |#{x: a·x = b·S(x)} − 128| / 256, as in the S-box literature
    # SAC: P[bit j of S(x) ⊕ S(x ⊕ e_i) = 1]
    sb = _bits(s)
    sac = np.empty((8, 8))
    for i in range(8):  # 8 input bits
        sac[i] = (sb ^ sb[x ^ (1 << i)]).mean(axis=0)
    # BIC: for output-bit pairs (j, k), the function bit_j ⊕ bit_k
    pairs = [(j, k) for j in range(8) for k in range(j + 1, 8)]
    pair_f = np.stack([sb[:, j] ^ sb[:, k] for j, k in pairs])
    bic_nl = int(128 - np.abs(_walsh(pair_f)).max() // 2)
    bic_sac = float(
        np.mean([[(pair_f[p] ^ pair_f[p][x ^ (1 << i)]).mean() for i in range(8)] for p in range(len(pairs))])
    )
    # difference distribution table
    ddt = np.zeros((256, 256), dtype=np.int64)
    dx = np.arange(256)
    for a in range(1, 256):  # 255 input differences, each a vector over all x
        ddt[a] = np.bincount(s ^ s[dx ^ a], minlength=256)
    return SboxStats(
        bijective=len(np.unique(s)) == 256,
        nonlinearity=nl,
        sac_mean=float(sac.mean()),
        sac_min=float(sac.min()),
        sac_max=float(sac.max()),
        bic_nl=bic_nl,
        bic_sac=bic_sac,
        du=int(ddt[1:].max()),
        lp=lp,
    )


def entropy(img: np.ndarray) -> float:
    """Shannon entropy in bits per byte of the image's bytes (ideal 8)."""
    counts = np.bincount(np.asarray(img).view(np.uint8).ravel(), minlength=256).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def chi_square(img: np.ndarray) -> float:
    """Chi-square of the byte histogram against uniform (255 dof; < 293.25 passes at α = 0.05)."""
    counts = np.bincount(np.asarray(img).view(np.uint8).ravel(), minlength=256).astype(np.float64)
    e = counts.sum() / 256.0
    return float(((counts - e) ** 2 / e).sum())


CHI2_CRITICAL = 293.2478  # χ²(255) at α = 0.05


def npcr_uaci(c1: np.ndarray, c2: np.ndarray) -> tuple[float, float]:
    """NPCR and UACI in percent between two cipher images of the same shape and dtype."""
    a = np.asarray(c1).astype(np.float64)
    b = np.asarray(c2).astype(np.float64)
    full = float(np.iinfo(np.asarray(c1).dtype).max)
    return float((a != b).mean() * 100.0), float((np.abs(a - b) / full).mean() * 100.0)


def npcr_critical(pixels: int, levels: int = 256, alpha: float = 0.05) -> float:
    """NPCR critical value (Wu et al. 2011) in percent for ``pixels`` and ``levels``."""
    from statistics import NormalDist

    z = NormalDist().inv_cdf(1 - alpha)
    mu = (levels - 1) / levels
    return 100.0 * (mu - z * math.sqrt(mu / (pixels * levels)))


def uaci_critical(pixels: int, levels: int = 256, alpha: float = 0.05) -> tuple[float, float]:
    """Two-sided UACI acceptance interval (Wu et al. 2011) in percent."""
    from statistics import NormalDist

    f = levels - 1
    z = NormalDist().inv_cdf(1 - alpha / 2)
    mu = (f + 2) / (3 * f + 3)
    var = (f + 2) * (f * f + 2 * f + 3) / (18 * (f + 1) ** 2 * pixels * f)
    sd = math.sqrt(var)
    return 100.0 * (mu - z * sd), 100.0 * (mu + z * sd)


def correlations(img: np.ndarray) -> dict[str, float]:
    """Pearson correlation of all horizontally, vertically and diagonally adjacent pairs.

    The first two axes of the image are rows and columns (extra axes are flattened into
    columns), so multi-frame stacks use their first frame.
    """
    a = np.asarray(img).astype(np.float64)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim > 2:
        a = a.reshape(a.shape[0], -1) if a.ndim == 3 and a.shape[-1] in (3, 4) else a[0].reshape(a.shape[1], -1)
    out = {}
    for name, (p, q) in {
        "horizontal": (a[:, :-1], a[:, 1:]),
        "vertical": (a[:-1, :], a[1:, :]),
        "diagonal": (a[:-1, :-1], a[1:, 1:]),
    }.items():
        if p.size < 2 or p.std() == 0 or q.std() == 0:
            out[name] = float("nan")
        else:
            out[name] = float(np.corrcoef(p.ravel(), q.ravel())[0, 1])
    return out
