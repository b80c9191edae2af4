"""``multipart/related`` (RFC 2387) as DICOMweb uses it: a streaming reader and a writer.

The reader holds one part at a time (a DICOM instance is the unit the cipher restores),
so a study of 10,000 instances streams through in the memory of its largest instance.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

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


class MultipartReader:
    """The parts of a multipart body as it arrives, each one a stream (:meth:`next_part`).

    A part's body is read through :meth:`read` before the next part is asked for (what is
    left of it is skipped then); the reader holds the unread rest of one chunk at a time, so
    a part of any size streams through in bounded memory.

    ``source``: the body as a buffered stream (:class:`Source`), when there is one. Part
    headers are then read line by line, so that a part whose ``Content-Length`` header
    gives its size starts at the stream's position and is read whole with one
    ``read`` into its own bytes object (no scan for the delimiter, no copy through the
    chunks); the delimiter is checked where that length says it is, and when it is not
    there, the part is read by scanning as any other.
    """

    def __init__(self, chunks: Iterable[bytes], boundary: str, max_part: int,
                 source: Source | None = None) -> None:  # fmt: skip
        self._chunks = iter(chunks)
        self._source = source
        self._delim = b"\r\n--" + boundary.encode("latin-1")
        self._max = max_part
        self._buf = bytearray(b"\r\n")  # so the first delimiter looks like every other one
        self._pos = 0  # first unread byte
        self._scan = 0  # no delimiter starts before this offset (past _pos)
        self._end = -1  # offset of the delimiter closing the current part, once seen
        self._in_part = False
        self._part_read = 0
        self._finished = False
        self._sized: int | None = None  # the current part's Content-Length, until used
        self.headers: dict[str, str] = {}

    def _fill(self) -> None:
        if self._pos > (1 << 20):  # drop what was read (offsets move with it)
            del self._buf[: self._pos]
            self._scan -= self._pos
            if self._end >= 0:
                self._end -= self._pos
            self._pos = 0
        if self._source is not None:
            line = self._source.readline(_FILL)
            if line:
                self._buf += line
                return
        else:
            for data in self._chunks:
                if data:
                    self._buf += data
                    return
        raise UpstreamError(502, "upstream multipart body ended without its closing boundary")

    def _read_sized(self, length: int) -> bytes | None:
        """The whole current part when its declared ``length`` is right (the delimiter
        follows it), read into its own bytes object; None (nothing consumed) otherwise."""
        assert self._source is not None
        held = len(self._buf) - self._pos  # none after headers read line by line
        if held >= length:
            return None  # in the buffer already: the scan finds its end at once
        rest = self._source.read(length - held)
        out = bytes(self._buf[self._pos:]) + rest if held else rest
        del self._buf[:]
        self._pos = self._scan = 0
        if len(out) == length:
            d = self._delim
            try:
                while len(self._buf) < len(d) + 2:
                    self._fill()
            except UpstreamError:
                pass
            if self._buf.startswith(d) and self._buf[len(d):len(d) + 2] in (b"--", b"\r\n"):
                self._end = 0
                self._part_read = length
                return out
        # not where the header said: put everything back and scan as usual
        self._buf[:0] = out
        return None

    def _find_end(self) -> None:
        """Look for the delimiter that ends the current part (sets ``_end``)."""
        d = self._delim
        while self._end < 0:
            at = self._buf.find(d, max(self._scan, self._pos))
            if at < 0:
                self._scan = max(self._pos, len(self._buf) - len(d))
                return
            if len(self._buf) < at + len(d) + 2:
                self._scan = at
                return
            if self._buf[at + len(d) : at + len(d) + 2] in (b"--", b"\r\n"):
                self._end = at
                self._scan = at
                return
            self._scan = at + 1  # "--boundary" followed by more characters: part of a body

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes of the current part's body (all of it for -1); b"" at its end."""
        if not self._in_part:
            return b""
        want = self._max + 1 if n < 0 else n
        if (self._sized is not None and self._part_read == 0 and self._end < 0
                and self._sized <= min(want, self._max)):
            whole = self._read_sized(self._sized)
            self._sized = None
            if whole is not None:
                return whole
        while True:
            self._find_end()
            limit = self._end if self._end >= 0 else self._scan
            if limit - self._pos >= want or self._end >= 0:
                take = min(want, limit - self._pos)
                self._part_read += take
                if self._part_read > self._max:
                    raise UpstreamError(502, "upstream part larger than the gateway accepts")
                with memoryview(self._buf) as view:  # one copy, released before a resize
                    data = bytes(view[self._pos : self._pos + take])
                self._pos += take
                return data
            if self._part_read + limit - self._pos > self._max:
                raise UpstreamError(502, "upstream part larger than the gateway accepts")
            self._fill()

    def next_part(self) -> bool:
        """Move to the next part (skipping the rest of this one); False after the last."""
        if self._finished:
            return False
        while self._in_part or self._end < 0:
            if self._in_part:
                while self.read(1 << 20):
                    pass
                self._in_part = False
                continue
            self._find_end()
            if self._end < 0:
                self._fill()
        d = self._delim
        after = self._end + len(d)
        if self._buf[after : after + 2] == b"--":
            self._finished = True
            return False
        # what came before the part's headers goes: the offsets below then stay put while
        # more is read (a fill drops what was read, and with it would move them)
        del self._buf[:after]
        self._pos = self._scan = 0
        # the part's headers end with an empty line (which may follow the delimiter at once)
        while (head_end := self._buf.find(b"\r\n\r\n", 0, 65536)) < 0:
            if len(self._buf) > 65536:
                raise UpstreamError(502, "upstream part headers too long")
            self._fill()
        self.headers = _headers(bytes(self._buf[2:head_end]))
        declared = self.headers.get("content-length", "")
        self._sized = (int(declared) if self._source is not None and declared.isdigit()
                       else None)  # fmt: skip
        self._pos = self._scan = head_end + 4
        self._end = -1
        self._in_part = True
        self._part_read = 0
        return True


#: The longest line asked of a :class:`Source` at once when scanning (part headers, parts
#: without a Content-Length).
_FILL = 64 * 1024


class Source(Protocol):
    """A body as a buffered stream (``http.client.HTTPResponse``, ``io.BufferedReader``)."""

    def read(self, n: int) -> bytes:
        """``n`` bytes, fewer only at the body's end."""

    def readline(self, limit: int) -> bytes:
        """Up to and including the next ``\\n``, at most ``limit`` bytes; b"" at the end."""


def iter_parts(chunks: Iterable[bytes], boundary: str, max_part: int) -> Iterator[Part]:
    """Parts of a multipart body arriving as ``chunks``; a part over ``max_part`` is an error."""
    reader = MultipartReader(chunks, boundary, max_part)
    while reader.next_part():
        yield Part(reader.headers, reader.read())


def new_boundary() -> str:
    return "sfgw-" + secrets.token_hex(12)


def part_head(boundary: str, content_type: str, length: int | None) -> bytes:
    """A part's delimiter and headers (no Content-Length when the length is not known)."""
    size = "" if length is None else f"Content-Length: {length}\r\n"
    return f"--{boundary}\r\nContent-Type: {content_type}\r\n{size}\r\n".encode("latin-1")


def part_pieces(boundary: str, content_type: str, body: bytes | Sequence[bytes | memoryview],
                ) -> list[bytes | memoryview]:  # fmt: skip
    """One part as head, body pieces, CRLF: written in turn, a large body is never copied."""
    pieces = [body] if isinstance(body, bytes) else list(body)
    length = sum(len(piece) for piece in pieces)
    return [part_head(boundary, content_type, length), *pieces, b"\r\n"]


def part_bytes(boundary: str, content_type: str, body: bytes) -> bytes:
    return b"".join(part_pieces(boundary, content_type, body))


def closing(boundary: str) -> bytes:
    return f"--{boundary}--\r\n".encode("latin-1")
