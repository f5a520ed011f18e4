"""The core vocabularies and the special ids every jaxlm vocabulary shares.

Id layout (T5/SeqIO convention): ``PAD_ID`` 0 (also the decoder's BOS), ``EOS_ID`` 1,
``UNK_ID`` 2, no separate BOS. :class:`ByteVocab` has seqio.ByteVocabulary's ids (UTF-8
byte + 3); :class:`SentencePieceVocab` reads a SentencePiece model file (one that
``jaxlm.data.vocab`` trained has exactly this layout); :class:`HFTokenizerVocab` is a Hugging
Face directory's own tokenizer, with its own ids. :func:`get_vocabulary` turns a
gin-friendly spec ('byte' or a model path) into one of them. No TensorFlow, no SeqIO:
the decoder and the ``infer`` job use these; ``jaxlm.data.vocab`` trains the
SentencePiece models and wraps them as SeqIO vocabularies with the same ids.
"""
from __future__ import annotations

import os
from typing import Any, List, Optional, Sequence, Union

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2


def until_eos(tokens, eos_id: Optional[int]) -> list:
  """The token ids (Python ints) before the first eos_id; all of them if there is none or
  eos_id is None."""
  tokens = [int(t) for t in tokens]
  return tokens[:tokens.index(eos_id)] if eos_id is not None and eos_id in tokens else tokens


def piece_id(vocabulary, piece: str) -> Optional[int]:
  """The id of ``piece`` as one SentencePiece piece (a seqio vocabulary's ``tokenizer`` or
  a :class:`SentencePieceVocab`'s ``sp``), or None if it is not one piece (or the
  vocabulary is not SentencePiece)."""
  sp = getattr(vocabulary, "tokenizer", None) or getattr(vocabulary, "sp", None)
  if sp is None:
    return None
  idx = sp.piece_to_id(piece)
  return None if idx == sp.unk_id() else int(idx)


class ByteVocab:
  """UTF-8 bytes offset by 3, the ids of seqio.ByteVocabulary."""
  pad_id, eos_id, unk_id = PAD_ID, EOS_ID, UNK_ID
  offset = 3
  vocab_size = 256 + 3

  def encode(self, text: str) -> List[int]:
    return [b + self.offset for b in text.encode("utf-8")]

  def decode(self, ids: Sequence[int]) -> str:
    ids = until_eos(ids, self.eos_id)
    data = bytes(i - self.offset for i in ids if self.offset <= i < self.vocab_size)
    return data.decode("utf-8", errors="ignore")


class SentencePieceVocab:
  """A SentencePiece model file; ids past the model's pieces (SeqIO sentinels) decode to ''."""

  def __init__(self, path: str):
    import sentencepiece  # pylint: disable=import-outside-toplevel
    self.path = path
    self.sp = sentencepiece.SentencePieceProcessor(model_file=path)
    self.eos_id = self.sp.eos_id() if self.sp.eos_id() >= 0 else EOS_ID
    self.vocab_size = self.sp.get_piece_size()

  def encode(self, text: str) -> List[int]:
    return list(self.sp.encode(text))

  def decode(self, ids: Sequence[int]) -> str:
    ids = [i for i in until_eos(ids, self.eos_id) if 0 < int(i) < self.vocab_size]
    return self.sp.decode(ids)


class HFTokenizerVocab:
  """The tokenizer of a Hugging Face directory (transformers.AutoTokenizer, local files
  only) as a jaxlm vocabulary. `encode` adds the tokenizer's own special tokens (LLaMA's
  BOS; nothing for GPT-2), so decoder prompts start with them instead of jaxlm's BOS 0
  (`decoder_prefix` is empty); `decode` cuts at the tokenizer's EOS and drops special
  tokens. `bos_id` is the id the model's documents start with (its BOS, else its EOS:
  GPT-2's <|endoftext|>), which the eval job puts in SeqIO's BOS slot."""
  decoder_prefix = ()

  def __init__(self, path: str):
    import transformers  # pylint: disable=import-outside-toplevel
    self.path = path
    self.tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    self.eos_id = self.tokenizer.eos_token_id
    bos = self.tokenizer.bos_token_id
    self.bos_id = self.eos_id if bos is None else bos
    self.vocab_size = len(self.tokenizer)

  def encode(self, text: str) -> List[int]:
    return list(self.tokenizer.encode(text))

  def decode(self, ids: Sequence[int]) -> str:
    return self.tokenizer.decode(until_eos(ids, self.eos_id), skip_special_tokens=True)


def get_vocabulary(vocabulary: Union[str, Any]):
  """'byte', a SentencePiece model path, or an object with encode/decode (returned as is)."""
  if not isinstance(vocabulary, str):
    return vocabulary
  if vocabulary == "byte":
    return ByteVocab()
  if not os.path.exists(vocabulary):
    raise FileNotFoundError(f"vocabulary {vocabulary!r}: not 'byte' and no such SentencePiece model")
  return SentencePieceVocab(vocabulary)
