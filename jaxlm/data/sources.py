"""Where text comes from: the embedded corpus and readers for files researchers bring.

The embedded corpus needs no download: every machine with Python has it.

* ``prose``: the ``pydoc_data`` help topics (one document per topic) and the docstrings
  of the standard library (one document per module/class/function docstring of at
  least ``MIN_DOCSTRING_CHARS`` characters), read with ``ast`` -- nothing is imported.
* ``code``: the standard library's ``.py`` sources, one document per file (tests,
  idlelib, generated codec tables and files over ``MAX_CODE_FILE_BYTES`` left out).

Both are extracted once per Python installation and cached as JSONL under
:func:`cache_dir` (``$JAXLM_CACHE`` or ``~/.cache/jaxlm``). A stable hash of each
document id puts ``VALIDATION_PERCENT`` of the documents in the ``validation`` split.

Readers (pure Python, no TensorFlow): :func:`read_jsonl_documents` (over
:func:`jaxlm.jsonl.read_jsonl`, the one JSONL reader), :func:`read_text_files`,
:func:`read_tfds_directory`, and :func:`iter_documents`, which understands a source
spec string. The ``*_source`` functions wrap them as SeqIO data sources; they import
TensorFlow/SeqIO lazily so that this module stays cheap to import.
"""
from __future__ import annotations

import ast
import contextlib
import fcntl
import glob
import hashlib
import json
import os
import sys
import sysconfig
import tempfile
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Union

from jaxlm.jsonl import FormatError, read_jsonl

EMBEDDED_SOURCES = ("prose", "code")
SPLITS = ("train", "validation")
VALIDATION_PERCENT = 2
MIN_DOCSTRING_CHARS = 200
MAX_CODE_FILE_BYTES = 300_000
_CORPUS_VERSION = 1
_SKIP_DIRS = {"test", "tests", "idlelib", "site-packages", "dist-packages", "turtledemo",
              "__pycache__", "_bundled", "pydoc_data", "__phello__"}


# ---------------------------------------------------------------------------- cache
def cache_dir(*parts: str) -> str:
  """``$JAXLM_CACHE`` (default ``~/.cache/jaxlm``) joined with ``parts``; created."""
  root = os.environ.get("JAXLM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "jaxlm")
  path = os.path.join(root, *parts)
  os.makedirs(path, exist_ok=True)
  return path


@contextlib.contextmanager
def file_lock(path: str):
  """An exclusive lock on ``path + '.lock'``: parallel test workers build a cache once."""
  with open(path + ".lock", "w") as handle:
    fcntl.flock(handle, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(handle, fcntl.LOCK_UN)


def atomic_write(path: str, data: Union[str, bytes]) -> None:
  """Write ``data`` to ``path`` through a temporary file, so readers never see half."""
  folder = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
  with os.fdopen(fd, "wb") as handle:
    handle.write(data.encode("utf-8") if isinstance(data, str) else data)
  os.replace(tmp, path)


def split_of(doc_id: str, validation_percent: int = VALIDATION_PERCENT) -> str:
  """Deterministic split assignment from a stable hash of the document id."""
  bucket = int.from_bytes(hashlib.md5(doc_id.encode("utf-8")).digest()[:4], "little") % 100
  return "validation" if bucket < validation_percent else "train"


# ---------------------------------------------------------------- embedded corpus
def _stdlib_files() -> List[str]:
  root = sysconfig.get_paths()["stdlib"]
  files = []
  for folder, dirs, names in os.walk(root):
    dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("config-"))
    files.extend(os.path.join(folder, n) for n in sorted(names) if n.endswith(".py"))
  return files


def _read_source(path: str) -> Optional[str]:
  try:
    with open(path, "rb") as handle:
      data = handle.read()
    return data.decode("utf-8")
  except (OSError, UnicodeDecodeError):
    return None


def parse_python(src: str, attempts: int = 3) -> Optional[ast.AST]:
  """``ast.parse`` or None for invalid source. Retries CPython 3.11's spurious
  "AST constructor recursion depth mismatch" SystemError, which other threads using
  the AST machinery at the same moment can trigger."""
  for attempt in range(attempts):
    try:
      return ast.parse(src)
    except (SyntaxError, ValueError):
      return None
    except SystemError:
      if attempt == attempts - 1:
        raise
  return None


def _docstrings(tree: ast.AST, relpath: str) -> Iterator[Dict[str, str]]:
  """Docstrings of a module and its classes/functions with their qualified names."""
  stack = [(tree, "")]
  while stack:
    node, prefix = stack.pop(0)
    for child in ast.iter_child_nodes(node):
      if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        stack.append((child, f"{prefix}{child.name}."))
    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
      doc = ast.get_docstring(node)
      if doc and len(doc) >= MIN_DOCSTRING_CHARS:
        name = prefix.rstrip(".") or "<module>"
        yield {"id": f"docstring:{relpath}:{name}", "text": doc}


def _extract_embedded() -> Dict[str, List[Dict[str, str]]]:
  import pydoc_data.topics  # pylint: disable=import-outside-toplevel

  prose = [{"id": f"topic:{name}", "text": text.strip()}
           for name, text in sorted(pydoc_data.topics.topics.items()) if text.strip()]
  code = []
  root = sysconfig.get_paths()["stdlib"]
  for path in _stdlib_files():
    relpath = os.path.relpath(path, root)
    src = _read_source(path)
    if src is None or not src.strip():
      continue
    if "Python Character Mapping Codec" in src[:400]:  # generated codec tables
      continue
    tree = parse_python(src)
    if tree is None:
      continue
    prose.extend(_docstrings(tree, relpath))
    if len(src.encode("utf-8")) <= MAX_CODE_FILE_BYTES:
      code.append({"id": f"code:{relpath}", "text": src})
  return {"prose": prose, "code": code}


def _embedded_cache_paths() -> Dict[str, str]:
  key = f"py{sys.version_info[0]}.{sys.version_info[1]}.{sys.version_info[2]}-v{_CORPUS_VERSION}"
  folder = cache_dir("corpus", f"embedded-{key}")
  return {name: os.path.join(folder, f"{name}.jsonl") for name in EMBEDDED_SOURCES}


_EMBEDDED_MEMO: Dict[str, List[Dict[str, str]]] = {}


def embedded_documents(name: str, split: Optional[str] = None) -> List[Dict[str, str]]:
  """Documents ``{"id", "text"}`` of the embedded source ``name`` ('prose' or 'code').

  ``split`` is 'train', 'validation' or None (all). Extracted once and cached on disk.
  """
  if name not in EMBEDDED_SOURCES:
    raise ValueError(f"unknown embedded source {name!r}; expected one of {EMBEDDED_SOURCES}")
  if name not in _EMBEDDED_MEMO:
    paths = _embedded_cache_paths()
    with file_lock(os.path.dirname(paths[name])):
      if not all(os.path.exists(p) for p in paths.values()):
        extracted = _extract_embedded()
        for key, docs in extracted.items():
          atomic_write(paths[key], "".join(json.dumps(d) + "\n" for d in docs))
    _EMBEDDED_MEMO[name] = [record for _, record in read_jsonl(paths[name])]
  docs = _EMBEDDED_MEMO[name]
  if split is None:
    return docs
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
  return [d for d in docs if split_of(d["id"]) == split]


# ------------------------------------------------------------------------ readers
def _expand(patterns: Union[str, Sequence[str]]) -> List[str]:
  patterns = [patterns] if isinstance(patterns, str) else list(patterns)
  files: List[str] = []
  for pattern in patterns:
    matched = sorted(glob.glob(pattern, recursive=True))
    if not matched:
      raise FileNotFoundError(f"no file matches {pattern!r}")
    files.extend(matched)
  return files


def read_jsonl_documents(patterns: Union[str, Sequence[str]], text_key: str = "text") -> Iterator[Dict[str, Any]]:
  """Records of JSONL files (a path, glob or list of them) that carry a string ``text_key``.

  Raises :class:`jaxlm.jsonl.FormatError` naming file and line on invalid UTF-8/JSON or
  a missing/non-string ``text_key``.
  """
  for path in _expand(patterns):
    for lineno, record in read_jsonl(path):
      if not isinstance(record.get(text_key), str):
        raise FormatError(path, lineno, f"no string field {text_key!r}")
      yield record


def read_text_files(patterns: Union[str, Sequence[str]], unit: str = "file") -> Iterator[Dict[str, str]]:
  """Plain-text documents ``{"id", "text"}``: one per file, per paragraph or per line.

  ``unit`` is 'file', 'paragraph' (blank-line separated) or 'line'. Invalid UTF-8
  raises :class:`jaxlm.jsonl.FormatError` naming the file and line.
  """
  if unit not in ("file", "paragraph", "line"):
    raise ValueError(f"unit must be 'file', 'paragraph' or 'line', got {unit!r}")
  for path in _expand(patterns):
    with open(path, "rb") as handle:
      data = handle.read()
    try:
      text = data.decode("utf-8")
    except UnicodeDecodeError as e:
      raise FormatError(path, data[: e.start].count(b"\n") + 1, f"invalid UTF-8 ({e.reason})") from None
    if unit == "file":
      if text.strip():
        yield {"id": path, "text": text}
      continue
    if unit == "line":
      for lineno, line in enumerate(text.splitlines(), start=1):
        if line.strip():
          yield {"id": f"{path}:{lineno}", "text": line}
      continue
    start, para = 1, []
    for lineno, line in enumerate(text.splitlines() + [""], start=1):
      if line.strip():
        if not para:
          start = lineno
        para.append(line)
      elif para:
        yield {"id": f"{path}:{start}", "text": "\n".join(para)}
        para = []


def read_tfds_directory(data_dir: str, split: str = "train", text_key: str = "text") -> Iterator[Dict[str, str]]:
  """Documents of a TFDS dataset already prepared on disk (``builder_from_directory``)."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  builder = tfds.builder_from_directory(data_dir)
  for i, example in enumerate(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False))):
    value = example[text_key]
    yield {"id": f"{data_dir}:{split}:{i}", "text": value.decode("utf-8") if isinstance(value, bytes) else str(value)}


def iter_documents(spec: str, split: Optional[str] = "train", text_key: str = "text") -> Iterator[Dict[str, Any]]:
  """Documents of a source spec.

  ``embedded`` (prose then code), ``embedded_prose``, ``embedded_code``,
  ``tfds:DATA_DIR`` (optionally ``tfds:DATA_DIR:SPLIT``), a ``.jsonl`` path/glob, or any
  other path/glob read as one plain-text document per file. Comma-separate several.
  """
  for part in [p.strip() for p in spec.split(",") if p.strip()]:
    if part == "embedded":
      for name in EMBEDDED_SOURCES:
        yield from embedded_documents(name, split)
    elif part.startswith("embedded_") and part[len("embedded_"):] in EMBEDDED_SOURCES:
      yield from embedded_documents(part[len("embedded_"):], split)
    elif part.startswith("tfds:"):
      rest = part[len("tfds:"):]
      data_dir, tfds_split = rest, ""
      if not os.path.isdir(rest) and ":" in rest:
        data_dir, _, tfds_split = rest.rpartition(":")
      yield from read_tfds_directory(data_dir, tfds_split or split or "train", text_key)
    elif ".jsonl" in part:
      yield from read_jsonl_documents(part, text_key)
    else:
      yield from read_text_files(part, "file")


# ---------------------------------------------------------------- SeqIO sources
def _strings_dataset(texts: List[str], shuffle: bool, seed: Optional[int]):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  ds = tf.data.Dataset.from_tensor_slices({"text": tf.constant(texts or [""], dtype=tf.string)})
  if not texts:
    ds = ds.take(0)
  if shuffle:
    ds = ds.shuffle(max(1, len(texts)), seed=seed, reshuffle_each_iteration=True)
  return ds


def embedded_source(name: str):
  """A SeqIO data source of the embedded corpus ``name`` with a ``text`` feature.

  Documents are counted lazily (``count_documents``), so registering a task extracts
  nothing; each host takes every ``num_shards``-th document, then shuffles them.
  """
  import seqio  # pylint: disable=import-outside-toplevel

  class EmbeddedDataSource(seqio.FunctionDataSource):
    @property
    def supports_arbitrary_sharding(self) -> bool:
      return True

    def count_documents(self, split: str) -> int:
      return len(embedded_documents(name, split))

    def get_dataset(self, split="train", shuffle=True, seed=None, shard_info=None, **unused):
      texts = [d["text"] for d in embedded_documents(name, split)]
      if shard_info is not None and shard_info.num_shards > 1:
        texts = texts[shard_info.index::shard_info.num_shards]
      return _strings_dataset(texts, shuffle, seed)

  def dataset_fn(split, shuffle_files, seed=None):
    return _strings_dataset([d["text"] for d in embedded_documents(name, split)], shuffle_files, seed)

  return EmbeddedDataSource(dataset_fn, splits=SPLITS)


def count_jsonl_documents(patterns: Union[str, Sequence[str]]) -> int:
  """Non-blank lines of JSONL files: their number of documents (bad lines included)."""
  total = 0
  for path in _expand(patterns):
    with open(path, "rb") as handle:
      total += sum(1 for line in handle if line.strip())
  return total


def _split_patterns(split_to_filepattern: Union[str, Mapping[str, Any]]) -> Mapping[str, Any]:
  if isinstance(split_to_filepattern, (str, list, tuple)):
    return {"train": split_to_filepattern}
  return dict(split_to_filepattern)


def jsonl_source(split_to_filepattern: Union[str, Mapping[str, Any]], text_key: str = "text"):
  """SeqIO source over JSONL files; a bad line fails with its file and line number."""
  import seqio  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  def generate(path):
    path = path.decode("utf-8") if isinstance(path, bytes) else path
    for record in read_jsonl_documents(path, text_key):
      yield {"text": record[text_key]}

  def read_file_fn(path):
    return tf.data.Dataset.from_generator(
        generate, args=(path,), output_signature={"text": tf.TensorSpec([], tf.string)})

  patterns = _split_patterns(split_to_filepattern)

  class JsonlDataSource(seqio.FileDataSource):
    def count_documents(self, split: str) -> int:
      return count_jsonl_documents(patterns[split])

  return JsonlDataSource(read_file_fn, patterns, cycle_length=4, block_length=1)


def text_source(split_to_filepattern: Union[str, Mapping[str, Any]], unit: str = "file"):
  """SeqIO source over plain-text files: one document per file, paragraph or line."""
  import seqio  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  def generate(path):
    path = path.decode("utf-8") if isinstance(path, bytes) else path
    for doc in read_text_files(path, unit):
      yield {"text": doc["text"]}

  def read_file_fn(path):
    return tf.data.Dataset.from_generator(
        generate, args=(path,), output_signature={"text": tf.TensorSpec([], tf.string)})

  return seqio.FileDataSource(read_file_fn, _split_patterns(split_to_filepattern), cycle_length=4, block_length=1)


def tfds_directory_source(data_dir: str, text_key: str = "text", splits: Optional[Mapping[str, str]] = None):
  """SeqIO source over a TFDS dataset prepared on disk; ``splits`` maps seqio->tfds split."""
  import seqio  # pylint: disable=import-outside-toplevel
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  builder = tfds.builder_from_directory(data_dir)
  splits = dict(splits or {s: s for s in builder.info.splits})

  class TfdsDirectorySource(seqio.FunctionDataSource):
    def count_documents(self, split: str) -> int:
      return builder.info.splits[splits[split]].num_examples

  def dataset_fn(split, shuffle_files, seed=None):
    ds = builder.as_dataset(split=splits[split], shuffle_files=shuffle_files,
                            read_config=tfds.ReadConfig(shuffle_seed=seed))
    return ds.map(lambda ex: {"text": ex[text_key]})

  return TfdsDirectorySource(dataset_fn, splits=tuple(splits))
