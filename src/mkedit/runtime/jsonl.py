"""Append-only JSONL files that survive an interrupted append (evaluation rows, paraphrase stores)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from mkedit.errors import DataFormatError

log = logging.getLogger(__name__)

T = TypeVar("T")


def parse_json_line(line: bytes) -> Any:
    return json.loads(line.decode("utf-8"))


def read_jsonl(
    path: Path, parse: Callable[[bytes], T] = parse_json_line, *, repair: bool, what: str = "valid JSON"
) -> list[tuple[int, T]]:
    """``(line number, parse(line))`` for each non-empty line of ``path``, in file order.

    A last line that does not parse is what an interrupted append leaves: it is dropped with a warning and,
    with ``repair``, cut off the file so that the next append starts on a fresh line. An unparsable line
    elsewhere means the file was damaged otherwise: a DataFormatError names it (``what`` the line should be),
    rather than results being silently lost. ``parse`` raises ValueError (or UnicodeDecodeError) to refuse.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataFormatError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    segments = data.split(b"\n")
    filled = [i for i, seg in enumerate(segments) if seg.strip()]
    last = filled[-1] if filled else -1
    parsed: list[tuple[int, T]] = []
    offset = keep_end = 0
    for i, seg in enumerate(segments):
        end = offset + len(seg) + (1 if i < len(segments) - 1 else 0)
        if seg.strip():
            try:
                parsed.append((i + 1, parse(seg)))
            except (UnicodeDecodeError, ValueError) as exc:
                if i != last:
                    raise DataFormatError(f"{path}: line {i + 1} is not {what} ({exc}); fix or delete it") from exc
                log.warning("%s: dropping a truncated last line (%d bytes)", path, len(seg))
                break
        keep_end = offset = end
    if repair and data and (keep_end < len(data) or not data.endswith(b"\n")):
        with open(path, "r+b") as fh:
            fh.truncate(keep_end)
            if keep_end and not data[:keep_end].endswith(b"\n"):
                fh.seek(keep_end)
                fh.write(b"\n")  # a complete last line whose newline was not written yet
            fh.flush()
            os.fsync(fh.fileno())
    return parsed
