"""GFNI + AVX-512 block kernel for the chaos chain (x86-64 with GFNI and AVX-512BW).

The round ``S(XNOR(x, prev)) + g·prev[j+d]`` is computed 64 lanes at a time with
``vgf2p8affineqb`` / ``vgf2p8affineinvqb``: the S-box is ``A2·inv(A1·x ⊕ c1) ⊕ c2``
(SPEC §1.4), so one affine and one affine-inverse instruction evaluate it for 64 bytes,
and multiplication by g in GF(2^8) is linear over GF(2), hence one more affine
instruction. The bytes are identical to the table kernel; the tests compare them.
Only imported when numba is present and the CPU reports ``gfni`` and ``avx512bw``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

_I8 = ir.IntType(8)
_V64 = ir.VectorType(_I8, 64)
_Q8 = ir.VectorType(ir.IntType(64), 8)


def _ptr(context: Any, builder: Any, aty: Any, arr: Any, off: Any) -> Any:
    data = context.make_array(aty)(context, builder, arr).data
    return builder.bitcast(builder.gep(data, [off]), _V64.as_pointer())


def _splat_q(builder: Any, q: Any) -> Any:
    v = builder.insert_element(ir.Constant(_Q8, ir.Undefined), q, ir.Constant(ir.IntType(32), 0))
    v = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(ir.IntType(32), 8), [0] * 8))
    return builder.bitcast(v, _V64)


def _splat_b(builder: Any, b: Any) -> Any:
    v = builder.insert_element(ir.Constant(_V64, ir.Undefined), b, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(ir.IntType(32), 64), [0] * 64))


def _fn(builder: Any, name: str) -> Any:
    mod = builder.module
    existing = mod.globals.get(name)
    if existing is not None:
        return existing
    return ir.Function(mod, ir.FunctionType(_V64, [_V64, _V64, _I8]), name)


def _round_block_impl(typingctx: Any, m: Any, off: Any, prev: Any, poff: Any, rot: Any, roff: Any, lkey: Any, koff: Any, consts: Any) -> Any:
    """m[off:off+64] = S(~(m ⊕ lkey ⊕ w ⊕ prev)) + g·rot[roff:roff+64].

    consts = (w, c1', c2, A1, A2, Mg) as uint64; c1' already folds the XNOR (A1·0xFF ⊕ c1).
    """
    sig = types.void(m, off, prev, poff, rot, roff, lkey, koff, consts)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        am, o, ap, po, ar, ro, ak, ko, cs = args
        tys = signature.args
        w, c1, c2, a1, a2, mg = (builder.extract_value(cs, i) for i in range(6))
        zero = ir.Constant(_I8, 0)
        affine = _fn(builder, "llvm.x86.vgf2p8affineqb.512")
        affinv = _fn(builder, "llvm.x86.vgf2p8affineinvqb.512")
        dst = _ptr(context, builder, tys[0], am, o)
        v = builder.load(dst, align=1)
        v = builder.xor(v, builder.load(_ptr(context, builder, tys[2], ap, po), align=1))
        v = builder.xor(v, builder.load(_ptr(context, builder, tys[6], ak, ko), align=1))
        v = builder.xor(v, _splat_b(builder, builder.trunc(w, _I8)))
        y = builder.call(affine, [v, _splat_q(builder, a1), zero])
        y = builder.xor(y, _splat_b(builder, builder.trunc(c1, _I8)))
        s = builder.call(affinv, [y, _splat_q(builder, a2), zero])
        s = builder.xor(s, _splat_b(builder, builder.trunc(c2, _I8)))
        g = builder.call(affine, [builder.load(_ptr(context, builder, tys[4], ar, ro), align=1), _splat_q(builder, mg), zero])
        builder.store(builder.add(s, g), dst, align=1)
        return context.get_dummy_value()

    return sig, codegen


_round_block: Any = intrinsic(_round_block_impl)


def _inverse_block_impl(typingctx: Any, m: Any, off: Any, prev: Any, poff: Any, rot: Any, roff: Any, lkey: Any, koff: Any, consts: Any) -> Any:
    """m[off:off+64] = S⁻¹(m − g·rot) ⊕ prev ⊕ lkey ⊕ w' (the inverse round).

    consts = (w', b2, b1, A2⁻¹, A1⁻¹, Mg): S⁻¹(y) = A1⁻¹·inv(A2⁻¹·y ⊕ b2) ⊕ b1 with
    b2 = A2⁻¹·c2 and b1 = A1⁻¹·c1; w' = w ⊕ 0xFF folds the XNOR's complement.
    """
    sig = types.void(m, off, prev, poff, rot, roff, lkey, koff, consts)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        am, o, ap, po, ar, ro, ak, ko, cs = args
        tys = signature.args
        w, b2, b1, a2i, a1i, mg = (builder.extract_value(cs, i) for i in range(6))
        zero = ir.Constant(_I8, 0)
        affine = _fn(builder, "llvm.x86.vgf2p8affineqb.512")
        affinv = _fn(builder, "llvm.x86.vgf2p8affineinvqb.512")
        dst = _ptr(context, builder, tys[0], am, o)
        g = builder.call(affine, [builder.load(_ptr(context, builder, tys[4], ar, ro), align=1), _splat_q(builder, mg), zero])
        y = builder.sub(builder.load(dst, align=1), g)
        t = builder.xor(builder.call(affine, [y, _splat_q(builder, a2i), zero]), _splat_b(builder, builder.trunc(b2, _I8)))
        u = builder.call(affinv, [t, _splat_q(builder, a1i), zero])
        u = builder.xor(u, _splat_b(builder, builder.trunc(builder.xor(b1, w), _I8)))
        u = builder.xor(u, builder.load(_ptr(context, builder, tys[2], ap, po), align=1))
        u = builder.xor(u, builder.load(_ptr(context, builder, tys[6], ak, ko), align=1))
        builder.store(u, dst, align=1)
        return context.get_dummy_value()

    return sig, codegen


_inverse_block: Any = intrinsic(_inverse_block_impl)


@njit(cache=True, nogil=True, boundscheck=False, inline="always")
def _gather_wrapped(tmp: np.ndarray, prev: np.ndarray, pbase: int, start: int, L: int) -> None:
    """tmp[t] = prev-row[(start + t) mod L]: the one 64-lane block that wraps around."""
    for t in range(64):
        u = start + t
        if u >= L:
            u -= L
        tmp[t] = prev[pbase + u]


@njit(cache=True, nogil=True, boundscheck=False)
def gfni_pass(
    m: np.ndarray,
    L: int,
    R: int,
    first: int,
    stop: int,
    step: int,
    iv: np.ndarray,
    lane_key: np.ndarray,
    row_key: np.ndarray,
    s_xnor: np.ndarray,
    mul: np.ndarray,
    k: int,
    last: int,
    chain_from_matrix: bool,
    c1: int,
    c2: int,
    a1: np.uint64,
    a2: np.uint64,
    mg: np.uint64,
) -> None:
    """One pass over the flat R×L matrix ``m``; same semantics as ``_kernels._pass_py``."""
    tmp = np.empty(64, dtype=np.uint8)
    for i in range(first, stop, step):
        if chain_from_matrix or i != first:
            prev = m
            pbase = (i - step) * L
        else:
            prev = iv
            pbase = 0
        d = (1 << (i % k)) if k > 0 else 0
        width = last if i == R - 1 and step < 0 else L
        rk = row_key[i]
        base = i * L
        consts = (np.uint64(rk), np.uint64(c1), np.uint64(c2), np.uint64(a1), np.uint64(a2), np.uint64(mg))
        j = 0
        while j + 64 <= width:
            jj = j + d
            if jj >= L:
                jj -= L
            if jj + 64 <= L:
                _round_block(m, base + j, prev, pbase + j, prev, pbase + jj, lane_key, j, consts)
            else:
                _gather_wrapped(tmp, prev, pbase, jj, L)
                _round_block(m, base + j, prev, pbase + j, tmp, 0, lane_key, j, consts)
            j += 64
        for jr in range(j, width):  # the ragged end of a partial row
            jj = jr + d
            if jj >= L:
                jj -= L
            v = m[base + jr] ^ lane_key[jr] ^ rk ^ prev[pbase + jr]
            m[base + jr] = (s_xnor[v] + mul[prev[pbase + jj]]) & 0xFF


@njit(cache=True, nogil=True, boundscheck=False)
def gfni_unpass(
    m: np.ndarray,
    L: int,
    first: int,
    stop: int,
    step: int,
    chain: int,
    iv: np.ndarray,
    lane_key: np.ndarray,
    row_key: np.ndarray,
    k: int,
    iv_row: int,
    b2: int,
    b1: int,
    a2i: np.uint64,
    a1i: np.uint64,
    mg: np.uint64,
) -> None:
    """Inverse of one pass over the flat matrix; same semantics as ``_kernels._unpass_py``
    (L is a multiple of 64 here)."""
    tmp = np.empty(64, dtype=np.uint8)
    for i in range(first, stop, step):
        if i == iv_row:
            prev = iv
            pbase = 0
        else:
            prev = m
            pbase = (i + chain) * L
        d = (1 << (i % k)) if k > 0 else 0
        consts = (np.uint64(row_key[i] ^ 0xFF), np.uint64(b2), np.uint64(b1), np.uint64(a2i), np.uint64(a1i), np.uint64(mg))
        base = i * L
        for j in range(0, L, 64):
            jj = j + d
            if jj >= L:
                jj -= L
            if jj + 64 <= L:
                _inverse_block(m, base + j, prev, pbase + j, prev, pbase + jj, lane_key, j, consts)
            else:
                _gather_wrapped(tmp, prev, pbase, jj, L)
                _inverse_block(m, base + j, prev, pbase + j, tmp, 0, lane_key, j, consts)
