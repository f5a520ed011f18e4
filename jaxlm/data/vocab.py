"""SentencePiece tokenizers: train from any source, load as a SeqIO vocabulary.

Id layout (T5 convention, the ids of :mod:`jaxlm.vocabularies`): 0 = PAD, 1 = EOS,
2 = UNK, no BOS. Then the user symbols
(``"\\n"``, ``"\\t"`` when whitespace is preserved, the UL2 mode tokens, and the chat
role and end-of-turn markers of :mod:`jaxlm.data.instructions`), then the
learned pieces, and last the ``num_sentinels`` sentinels added by SeqIO:
``<extra_id_0>`` = ``vocab_size - 1``, ``<extra_id_1>`` = ``vocab_size - 2``, ...
``vocab_size`` is always the total, sentinels included. No space is put before a text
(no dummy prefix), so SeqIO's sentinel pieces (``▁<extra_id_N>``) are matched in text
after a space; the objectives insert sentinels as ids.

Train from the command line::

    python -m jaxlm.data.vocab --source embedded --vocab_size 4096 --output /tmp/embedded.model

or in Python with :func:`train_sentencepiece`; :func:`seqio_vocabulary` trains once per
configuration, caches the model under ``$JAXLM_CACHE/vocab`` and returns it as a SeqIO
vocabulary (the core's ``jaxlm.vocabularies.SentencePieceVocab`` reads the same file
without SeqIO).
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import io
import json
import os
import random
import sys
from typing import Iterable, List, Optional, Sequence

import gin

from jaxlm.data import sources
from jaxlm.data.instructions import CHAT_SYMBOLS
from jaxlm.vocabularies import EOS_ID, PAD_ID, UNK_ID

UL2_MODE_TOKENS = ("[NLU]", "[NLG]", "[S2S]")
WHITESPACE_SYMBOLS = ("\n", "\t")
NORMALIZATIONS = ("nmt_nfkc", "nfkc", "nmt_nfkc_cf", "nfkc_cf", "identity")
MODEL_TYPES = ("bpe", "unigram")


def _training_lines(texts: Iterable[str], max_lines: int, seed: int, max_line_chars: int) -> List[str]:
  """Non-empty lines of ``texts`` (each clipped), a deterministic sample of ``max_lines``."""
  lines = []
  for text in texts:
    for line in text.split("\n"):
      if line.strip():
        lines.append(line[:max_line_chars])
  if len(lines) > max_lines:
    lines = random.Random(seed).sample(lines, max_lines)
  return lines


@gin.configurable
def train_sentencepiece(
    texts: Iterable[str],
    output_path: str,
    vocab_size: int = 4096,
    model_type: str = "bpe",
    byte_fallback: bool = True,
    normalization: str = "nmt_nfkc",
    num_sentinels: int = 128,
    mode_tokens: Sequence[str] = UL2_MODE_TOKENS,
    chat_symbols: Sequence[str] = CHAT_SYMBOLS,
    preserve_whitespace: bool = True,
    add_dummy_prefix: bool = False,
    split_digits: bool = True,
    character_coverage: float = 0.9995,
    max_lines: int = 300_000,
    seed: int = 0,
) -> str:
  """Train a SentencePiece model on the lines of ``texts`` and write it to ``output_path``
  (with a ``.json`` sidecar recording the options); returns ``output_path``.

  ``vocab_size`` is the total the SeqIO vocabulary will have, the ``num_sentinels`` ids
  reserved at the end for span corruption (``<extra_id_N>``) included. ``model_type`` is
  'bpe' or 'unigram'; ``normalization`` one of ``NORMALIZATIONS``. ``byte_fallback``
  turns unknown characters into UTF-8 byte pieces instead of UNK; ``mode_tokens`` become
  single-id user symbols (UL2's ``[NLU]``, ``[NLG]``, ``[S2S]``), and so do
  ``chat_symbols`` (the chat template's role and end-of-turn markers); ``preserve_whitespace``
  keeps newlines, tabs and runs of spaces (needed for code); without ``add_dummy_prefix``
  no space is put before a text, so a prompt and its continuation tokenized apart give the
  tokens of their concatenation (instruction targets start where the prompt ends);
  ``split_digits`` makes every
  digit its own piece; ``character_coverage`` is the share of characters the pieces cover
  (the rest: bytes or UNK). At most ``max_lines`` lines (a sample seeded by ``seed``, which
  also seeds SentencePiece) are used.
  """
  import sentencepiece as spm  # pylint: disable=import-outside-toplevel

  if model_type not in MODEL_TYPES:
    raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {model_type!r}")
  if normalization not in NORMALIZATIONS:
    raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
  user_symbols = list(WHITESPACE_SYMBOLS if preserve_whitespace else ()) + list(mode_tokens) + list(chat_symbols)
  piece_budget = vocab_size - num_sentinels
  if piece_budget <= 3 + len(user_symbols) + (256 if byte_fallback else 0):
    raise ValueError(f"vocab_size={vocab_size} leaves no room for learned pieces after "
                     f"{num_sentinels} sentinels, {len(user_symbols)} user symbols"
                     f"{' and 256 byte pieces' if byte_fallback else ''}")
  lines = _training_lines(texts, max_lines, seed, max_line_chars=4096)
  if not lines:
    raise ValueError("no text to train a tokenizer on")
  spm.set_random_generator_seed(seed)
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(lines),
      model_writer=model,
      vocab_size=piece_budget,
      model_type=model_type,
      pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID, bos_id=-1,
      byte_fallback=byte_fallback,
      normalization_rule_name=normalization,
      remove_extra_whitespaces=not preserve_whitespace,
      add_dummy_prefix=add_dummy_prefix,
      allow_whitespace_only_pieces=preserve_whitespace,
      split_digits=split_digits,
      user_defined_symbols=user_symbols,
      character_coverage=character_coverage,
      max_sentence_length=16384,
      shuffle_input_sentence=False,
      num_threads=1,
      minloglevel=2,
  )
  folder = os.path.dirname(os.path.abspath(output_path))
  os.makedirs(folder, exist_ok=True)
  sources.atomic_write(output_path, model.getvalue())
  meta = dict(vocab_size=vocab_size, model_type=model_type, byte_fallback=byte_fallback,
              normalization=normalization, num_sentinels=num_sentinels, mode_tokens=list(mode_tokens),
              chat_symbols=list(chat_symbols), add_dummy_prefix=add_dummy_prefix,
              preserve_whitespace=preserve_whitespace, split_digits=split_digits,
              character_coverage=character_coverage, max_lines=max_lines, seed=seed,
              training_lines=len(lines))
  sources.atomic_write(output_path + ".json", json.dumps(meta, indent=1))
  return output_path


def load_vocabulary(model_path: str, num_sentinels: Optional[int] = None):
  """A ``seqio.SentencePieceVocabulary`` with the sentinels at the end of the vocab.

  ``num_sentinels`` defaults to what the training sidecar (``model_path + '.json'``)
  recorded, else 0.
  """
  import seqio  # pylint: disable=import-outside-toplevel

  if not os.path.exists(model_path):
    raise FileNotFoundError(f"no SentencePiece model at {model_path}")
  if num_sentinels is None:
    meta_path = model_path + ".json"
    num_sentinels = 0
    if os.path.exists(meta_path):
      with open(meta_path) as handle:
        num_sentinels = json.load(handle).get("num_sentinels", 0)
  return seqio.SentencePieceVocabulary(model_path, extra_ids=num_sentinels)


def _source_fingerprint(source: str) -> str:
  """Identifies the training data: the Python version for the embedded corpus, else
  the files' paths, sizes and modification times."""
  parts = []
  for spec in source.split(","):
    spec = spec.strip()
    if spec.startswith("embedded"):
      parts.append(f"{spec}:{sys.version_info[:3]}:v{sources._CORPUS_VERSION}")  # pylint: disable=protected-access
    else:
      path = spec[len("tfds:"):] if spec.startswith("tfds:") else spec
      for name in sorted(glob.glob(path, recursive=True)) or [path]:
        stat = os.stat(name) if os.path.exists(name) else None
        parts.append(f"{os.path.abspath(name)}:{stat.st_size if stat else 0}:{stat.st_mtime_ns if stat else 0}")
  return "|".join(parts)


@gin.configurable
def seqio_vocabulary(
    source: str = "embedded",
    vocab_size: int = 4096,
    model_type: str = "bpe",
    byte_fallback: bool = True,
    normalization: str = "nmt_nfkc",
    num_sentinels: int = 128,
    preserve_whitespace: bool = True,
    max_lines: int = 300_000,
    seed: int = 0,
    model_path: Optional[str] = None,
):
  """The SeqIO vocabulary trained on ``source`` (see :func:`sources.iter_documents`).

  Trained on the 'train' split the first time a configuration is asked for, then
  loaded from ``$JAXLM_CACHE/vocab``. Safe to call from parallel processes. With
  ``model_path`` (e.g. the quickstart's ``runs/quickstart/data/spm_2048.model``) that
  SentencePiece model is loaded instead (its sentinels as its training sidecar says), and nothing is
  trained.
  """
  if model_path is not None:
    return load_vocabulary(model_path)
  options = dict(vocab_size=vocab_size, model_type=model_type, byte_fallback=byte_fallback,
                 normalization=normalization, num_sentinels=num_sentinels,
                 preserve_whitespace=preserve_whitespace, max_lines=max_lines, seed=seed)
  key = json.dumps([_source_fingerprint(source), options, list(CHAT_SYMBOLS), "no dummy prefix"], sort_keys=True)
  digest = hashlib.sha1(key.encode("utf-8")).hexdigest()[:12]
  name = "".join(c if c.isalnum() else "_" for c in source)[:40]
  path = os.path.join(sources.cache_dir("vocab"), f"{name}-{model_type}{vocab_size}-{digest}.model")
  with sources.file_lock(path):
    if not os.path.exists(path):
      texts = (d["text"] for d in sources.iter_documents(source, split="train"))
      train_sentencepiece(texts, path, mode_tokens=UL2_MODE_TOKENS, **options)
  return load_vocabulary(path, num_sentinels)


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m jaxlm.data.vocab", description=__doc__.split("\n\n")[0])
  parser.add_argument("--source", default="embedded",
                      help="embedded | embedded_prose | embedded_code | FILE.jsonl | GLOB | tfds:DIR (comma-separated)")
  parser.add_argument("--vocab_size", type=int, default=4096)
  parser.add_argument("--model_type", choices=MODEL_TYPES, default="bpe")
  parser.add_argument("--normalization", choices=NORMALIZATIONS, default="nmt_nfkc")
  parser.add_argument("--num_sentinels", type=int, default=128)
  parser.add_argument("--no_byte_fallback", action="store_true")
  parser.add_argument("--no_preserve_whitespace", action="store_true")
  parser.add_argument("--text_key", default="text")
  parser.add_argument("--max_lines", type=int, default=300_000)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--output", default=None, help="model path (default: under $JAXLM_CACHE/vocab)")
  args = parser.parse_args(argv)
  output = args.output or os.path.join(sources.cache_dir("vocab"), f"cli-{args.model_type}{args.vocab_size}.model")
  texts = (d["text"] for d in sources.iter_documents(args.source, split="train", text_key=args.text_key))
  train_sentencepiece(texts, output, vocab_size=args.vocab_size, model_type=args.model_type,
                      byte_fallback=not args.no_byte_fallback, normalization=args.normalization,
                      num_sentinels=args.num_sentinels, preserve_whitespace=not args.no_preserve_whitespace,
                      max_lines=args.max_lines, seed=args.seed)
  import sentencepiece as spm  # pylint: disable=import-outside-toplevel

  sp = spm.SentencePieceProcessor(model_file=output)
  sample = "def add(a, b):\n    return a + b  # The sum of two numbers."
  print(json.dumps({"model": output, "pieces": sp.get_piece_size(),
                    "vocab_size_with_sentinels": sp.get_piece_size() + args.num_sentinels,
                    "sample": sp.encode(sample, out_type=str)}, ensure_ascii=False))
  return 0


if __name__ == "__main__":
  sys.exit(main())
