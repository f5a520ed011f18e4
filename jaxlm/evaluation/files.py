"""Reading benchmark and sample files, with errors that name the file and line."""
from __future__ import annotations

import gzip
import json


class FormatError(ValueError):
  """A malformed input file; the message starts with ``path:line:``."""

  def __init__(self, path: str, line: int, message: str):
    super().__init__(f"{path}:{line}: {message}")
    self.path, self.line = path, line


def read_jsonl(path: str) -> list[tuple[int, dict]]:
  """(line number, object) for each non-blank line of a JSONL(.gz) file."""
  opener = gzip.open if path.endswith(".gz") else open
  rows = []
  with opener(path, "rt", encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise FormatError(path, lineno, f"invalid JSON: {e.msg} (column {e.colno})") \
            from None
      if not isinstance(row, dict):
        raise FormatError(path, lineno, "expected one JSON object per line")
      rows.append((lineno, row))
  return rows
