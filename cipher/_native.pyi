# Type stub of the C extension cipher._native (source: cipher/csrc/).
from typing import TypeAlias

from numpy import ndarray
from typing_extensions import Buffer

_Buf: TypeAlias = Buffer | ndarray

KERNELS: tuple[str, ...]  # the kernels this CPU runs, fastest first; "table" last
BUILT: tuple[str, ...]  # every kernel compiled into this build
CONSTANT_TIME: tuple[str, ...]  # the kernels without secret-indexed memory access

def scalar_samples(x0: float, r: float, count: int, transient: int, quant: float, /) -> bytes: ...
def stream_samples(
    x0: float, r: float, count: int, lanes: int, step: float, transient: int, quant: float, /
) -> bytes: ...
def distinct(buf: _Buf, /) -> int: ...
def matrix(size: int, /) -> bytearray: ...
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
    kernel: str,
    src: _Buf | None = None,
) -> None: ...
def decrypt(
    m: _Buf,
    st: _Buf,
    sbox_samples: _Buf,
    g_f: int,
    g_b: int,
    lane_bits: int,
    last: int,
    tail_start: int,
    kernel: str,
    src: _Buf | None = None,
) -> None: ...
def walk(
    buf: _Buf,
    pos: int,
    little: bool,
    explicit: bool,
    stop_group: int,
    keep_group: int,
    keep_tags: tuple[int, ...],
    /,
) -> tuple[list[tuple[int, int, bytes, int, int]], int, int]: ...
