# Type stub of the C extension cipher._native (source: cipher/_native.c).
from typing import TypeAlias

from numpy import ndarray
from typing_extensions import Buffer

_Buf: TypeAlias = Buffer | ndarray

GFNI: bool

def scalar_samples(x0: float, r: float, count: int, transient: int, quant: float, /) -> bytes: ...
def stream_samples(
    x0: float, r: float, count: int, lanes: int, step: float, transient: int, quant: float, /
) -> bytes: ...
def distinct(buf: _Buf, /) -> int: ...
def sbox(samples: _Buf, /) -> tuple[bytes, bytes]: ...
def encrypt(
    m: _Buf,
    st: _Buf,
    sbox_samples: _Buf,
    g_f: int,
    g_b: int,
    lane_bits: int,
    last: int,
    tail_start: int,
    gfni: int = -1,
    src: _Buf | None = None,
) -> str: ...
def decrypt(
    m: _Buf,
    st: _Buf,
    sbox_samples: _Buf,
    g_f: int,
    g_b: int,
    lane_bits: int,
    last: int,
    tail_start: int,
    gfni: int = -1,
    src: _Buf | None = None,
) -> str: ...
