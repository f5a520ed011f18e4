"""JSON Lines: the one reader, whose errors name the file and the line.

``read_jsonl(path)`` yields ``(line number, object)`` for every non-blank line of a
``.jsonl`` (or gzip-compressed ``.jsonl.gz``) file. A line that is not UTF-8, not JSON or
not a JSON object raises :class:`FormatError` (``path:line: what is wrong``); with
``errors="yield"`` it is yielded as ``(line number, FormatError)`` instead, for readers
that count bad lines and go on (the cleaning job). Standard library only: the core
(``jaxlm.inference``), ``jaxlm.data`` and ``jaxlm.evaluation`` all read JSONL through it.
"""
from __future__ import annotations

import gzip
import json
from typing import Iterator, Tuple, Union

ERRORS = ("raise", "yield")


class FormatError(ValueError):
  """A malformed input file; the message starts with ``path:line:``."""

  def __init__(self, path: str, line: int, message: str):
    super().__init__(f"{path}:{line}: {message}")
    self.path, self.line, self.reason = path, line, message


def _parse(path: str, lineno: int, raw: bytes) -> Union[dict, FormatError]:
  try:
    line = raw.decode("utf-8")
  except UnicodeDecodeError as e:
    return FormatError(path, lineno, f"invalid UTF-8 ({e.reason} at byte {e.start})")
  try:
    row = json.loads(line)
  except json.JSONDecodeError as e:
    return FormatError(path, lineno, f"invalid JSON ({e.msg}, column {e.colno})")
  if not isinstance(row, dict):
    return FormatError(path, lineno, f"expected one JSON object per line, got {type(row).__name__}")
  return row


def read_jsonl(path: str, errors: str = "raise") -> Iterator[Tuple[int, Union[dict, FormatError]]]:
  """``(line number, object)`` for each non-blank line of a JSONL(.gz) file.

  ``errors`` is ``"raise"`` (a bad line raises :class:`FormatError`) or ``"yield"`` (it
  comes back as ``(line number, FormatError)`` and reading goes on)."""
  if errors not in ERRORS:
    raise ValueError(f"read_jsonl(errors={errors!r}): expected one of {ERRORS}")
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as handle:
    for lineno, raw in enumerate(handle, start=1):
      if not raw.strip():
        continue
      row = _parse(path, lineno, raw)
      if isinstance(row, FormatError) and errors == "raise":
        raise row
      yield lineno, row
