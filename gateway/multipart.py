"""``multipart/related`` (RFC 2387) as DICOMweb uses it: a streaming reader and a writer.

The reader holds one part at a time (a DICOM instance is the unit the cipher restores),
so a study of 10,000 instances streams through in the memory of its largest instance.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from gateway.errors import UpstreamError

_BOUNDARY_RE = re.compile(r'boundary="?([^";,\s]+)"?', re.IGNORECASE)


@dataclass(frozen=True)
class Part:
    headers: dict[str, str]  # lower-case names
    body: bytes


def boundary_of(content_type: str) -> str:
    match = _BOUNDARY_RE.search(content_type or "")
    if not match:
        raise UpstreamError(502, "upstream answered without a multipart boundary")
    return match.group(1)


def _headers(raw: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in raw.decode("latin-1").split("\r\n"):
        name, sep, value = line.partition(":")
        if sep:
            out[name.strip().lower()] = value.strip()
    return out


def iter_parts(chunks: Iterable[bytes], boundary: str, max_part: int) -> Iterator[Part]:
    """Parts of a multipart body arriving as ``chunks``; a part over ``max_part`` is an error."""
    delim = b"\r\n--" + boundary.encode("latin-1")
    buf = bytearray(b"\r\n")  # so the first delimiter looks like every other one
    started = False
    scan = 0
    for chunk in chunks:
        buf += chunk
        while True:
            at = buf.find(delim, scan)
            if at < 0:
                scan = max(0, len(buf) - len(delim))
                if len(buf) > max_part + len(delim) + 4096:
                    raise UpstreamError(502, "upstream part larger than the gateway accepts")
                break
            tail = at + len(delim)
            if len(buf) < tail + 2:
                scan = at
                break
            after = bytes(buf[tail : tail + 2])
            if after not in (b"--", b"\r\n"):
                scan = at + 1  # "--boundary" followed by more characters: part of a body
                continue
            if started:
                head_end = buf.find(b"\r\n\r\n", 0, at)
                body_start = 0 if head_end < 0 else head_end + 4
                if at - body_start > max_part:
                    raise UpstreamError(502, "upstream part larger than the gateway accepts")
                headers = {} if head_end < 0 else _headers(bytes(buf[:head_end]))
                yield Part(headers, bytes(buf[body_start:at]))
            if after == b"--":
                return
            started = True
            del buf[: tail + 2]  # the delimiter and its CRLF
            scan = 0
    if started:
        raise UpstreamError(502, "upstream multipart body ended without its closing boundary")


def new_boundary() -> str:
    return "sfgw-" + secrets.token_hex(12)


def part_head(boundary: str, content_type: str, length: int) -> bytes:
    return (f"--{boundary}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {length}\r\n\r\n").encode("latin-1")  # fmt: skip


def part_pieces(boundary: str, content_type: str, body: bytes) -> tuple[bytes, bytes, bytes]:
    """One part as (head, body, CRLF): written in turn, a large body is never copied."""
    return part_head(boundary, content_type, len(body)), body, b"\r\n"


def part_bytes(boundary: str, content_type: str, body: bytes) -> bytes:
    return b"".join(part_pieces(boundary, content_type, body))


def closing(boundary: str) -> bytes:
    return f"--{boundary}--\r\n".encode("latin-1")
