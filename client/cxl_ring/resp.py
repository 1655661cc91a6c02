"""RESP2: decoding replies (CMD payloads), reading client commands (the proxy), encoding both.

Buffer handling only; no sockets. Parsers work on a ``bytes``/``bytearray`` with a position
and raise ``Incomplete`` when the data ends inside a value (the caller keeps the bytes and
waits for more) and ``RespError`` when the data can never become valid.
"""

from __future__ import annotations

from typing import Any, Union

from .exceptions import ProtocolError, ResponseError, response_error

CRLF = b"\r\n"
MAX_BULK = 512 * 1024 * 1024     # Redis' proto-max-bulk-len default
MAX_MULTIBULK = 1024 * 1024      # Redis' limit on arguments in one command
MAX_INLINE = 64 * 1024           # Redis' PROTO_INLINE_MAX_SIZE
MAX_DEPTH = 32

Reply = Union[bytes, int, None, list, ResponseError]


class Incomplete(Exception):
    """The buffer ends inside a value."""


class RespError(ProtocolError):
    """Bytes that are not RESP2."""


def _line(buf: bytes, pos: int) -> tuple[bytes, int]:
    end = buf.find(CRLF, pos)
    if end < 0:
        if len(buf) - pos > MAX_INLINE:
            raise RespError("line too long")
        raise Incomplete
    return bytes(buf[pos:end]), end + 2


def _int(raw: bytes, what: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise RespError(f"invalid {what} {raw[:32]!r}") from None


def parse_reply(buf: bytes, pos: int = 0, depth: int = 0) -> tuple[Reply, int]:
    """Decode one RESP2 reply at ``pos``; returns (value, next position).

    Simple strings and bulk strings become bytes, integers int, nil None, arrays lists, and an
    error reply a ResponseError instance (returned, not raised).
    """
    if pos >= len(buf):
        raise Incomplete
    kind = buf[pos]
    line, nxt = _line(buf, pos + 1)
    if kind == 43:  # '+'
        return line, nxt
    if kind == 45:  # '-'
        return response_error(line.decode("utf-8", "replace")), nxt
    if kind == 58:  # ':'
        return _int(line, "integer"), nxt
    if kind == 36:  # '$'
        n = _int(line, "bulk length")
        if n == -1:
            return None, nxt
        if not 0 <= n <= MAX_BULK:
            raise RespError(f"invalid bulk length {n}")
        if len(buf) < nxt + n + 2:
            raise Incomplete
        if buf[nxt + n : nxt + n + 2] != CRLF:
            raise RespError("bulk string not terminated by CRLF")
        return bytes(buf[nxt : nxt + n]), nxt + n + 2
    if kind == 42:  # '*'
        n = _int(line, "array length")
        if n == -1:
            return None, nxt
        if not 0 <= n <= MAX_MULTIBULK or depth >= MAX_DEPTH:
            raise RespError(f"invalid array length {n} or nesting too deep")
        out = []
        for _ in range(n):
            item, nxt = parse_reply(buf, nxt, depth + 1)
            out.append(item)
        return out, nxt
    raise RespError(f"unknown RESP2 type byte {bytes([kind])!r}")


def decode_one_reply(payload: bytes) -> Reply:
    """A CMD payload: exactly one complete RESP2 reply, nothing after it."""
    try:
        value, end = parse_reply(payload)
    except Incomplete:
        raise ProtocolError("truncated RESP2 reply in CMD response") from None
    if end != len(payload):
        raise ProtocolError(f"{len(payload) - end} stray bytes after the RESP2 reply")
    return value


def decode_strings(value: Any, encoding: str, errors: str = "strict") -> Any:
    """bytes -> str throughout a reply (decode_responses=True)."""
    if isinstance(value, bytes):
        return value.decode(encoding, errors)
    if isinstance(value, list):
        return [decode_strings(v, encoding, errors) for v in value]
    return value


# ---- Encoding ----------------------------------------------------------------------------------


def encode_bulk(value: bytes | None) -> bytes:
    if value is None:
        return b"$-1\r\n"
    return b"$%d\r\n%s\r\n" % (len(value), value)


def encode_integer(n: int) -> bytes:
    return b":%d\r\n" % n


def encode_error(text: str) -> bytes:
    flat = text.replace("\r", " ").replace("\n", " ")
    return b"-" + flat.encode("utf-8", "replace") + CRLF


def encode_simple(text: bytes) -> bytes:
    return b"+" + text + CRLF


# ---- Reading commands from clients (the proxy) --------------------------------------------------


class CommandReader:
    """Incremental reader of client commands: RESP2 multibulk arrays and inline commands."""

    def __init__(self, max_bulk: int = MAX_BULK) -> None:
        self.buf = bytearray()
        self.pos = 0
        self.max_bulk = max_bulk
        self.error: RespError | None = None

    def feed(self, data: bytes) -> None:
        if self.pos and self.pos == len(self.buf):
            self.buf.clear()
            self.pos = 0
        elif self.pos > 65536:
            del self.buf[: self.pos]
            self.pos = 0
        self.buf += data

    def commands(self) -> list[list[bytes]]:
        """Every complete command in the buffer (argv lists). Raises RespError on bad input."""
        if self.error is not None:
            raise self.error
        out = []
        buf = self.buf
        while self.pos < len(buf):
            try:
                argv, nxt = self._one(buf, self.pos)
            except Incomplete:
                break
            except RespError as e:
                if not out:
                    raise
                self.error = e  # the commands before it still count; raised next time
                break
            self.pos = nxt
            if argv:
                out.append(argv)
        return out

    def _one(self, buf: bytearray, pos: int) -> tuple[list[bytes], int]:
        if buf[pos] != 42:  # inline command: one line, words split on spaces
            line, nxt = _line(buf, pos)
            if line.endswith(b"\r"):
                line = line[:-1]
            return line.split(), nxt
        end = buf.find(CRLF, pos)
        if end < 0:
            if len(buf) - pos > MAX_INLINE:
                raise RespError("invalid multibulk length")
            raise Incomplete
        try:
            n = int(buf[pos + 1 : end])
        except ValueError:
            raise RespError("invalid multibulk length") from None
        if n > MAX_MULTIBULK:
            raise RespError("invalid multibulk length")
        nxt = end + 2
        argv = []
        for _ in range(n):
            if nxt >= len(buf):
                raise Incomplete
            if buf[nxt] != 36:
                raise RespError(f"expected '$', got '{chr(buf[nxt])}'")
            end = buf.find(CRLF, nxt)
            if end < 0:
                if len(buf) - nxt > MAX_INLINE:
                    raise RespError("invalid bulk length")
                raise Incomplete
            try:
                blen = int(buf[nxt + 1 : end])
            except ValueError:
                raise RespError("invalid bulk length") from None
            if not 0 <= blen <= self.max_bulk:
                raise RespError("invalid bulk length")
            start = end + 2
            if len(buf) < start + blen + 2:
                raise Incomplete
            if buf[start + blen : start + blen + 2] != CRLF:
                raise RespError("bulk argument not terminated by CRLF")
            argv.append(bytes(buf[start : start + blen]))
            nxt = start + blen + 2
        return argv, nxt
