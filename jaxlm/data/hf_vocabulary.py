"""A Hugging Face directory's tokenizer as a SeqIO vocabulary, so that SeqIO tasks (the eval
job's suite tasks) tokenize as the directory's model expects.

Texts are encoded without the tokenizer's special tokens: SeqIO's feature converters put
a BOS slot (id 0) in front of every decoder row, and the evaluator writes the model's own
BOS there (`HFSeqioVocabulary.bos_id`; see jaxlm.evaluation.evaluator's `bos_id`), so a
LLaMA row starts with one <s>, not two, and a GPT-2 row with <|endoftext|>.
"""
from __future__ import annotations

from typing import Sequence

import seqio
import tensorflow as tf

from jaxlm.vocabularies import HFTokenizerVocab, until_eos


class HFSeqioVocabulary(seqio.Vocabulary):
  """seqio.Vocabulary over transformers.AutoTokenizer.from_pretrained(path) (local files)."""

  def __init__(self, path: str):
    self.hf = HFTokenizerVocab(path)
    super().__init__(extra_ids=0)

  @property
  def path(self) -> str:
    return self.hf.path

  @property
  def bos_id(self) -> int:
    return self.hf.bos_id

  @property
  def eos_id(self) -> int:
    return self.hf.eos_id

  @property
  def unk_id(self):
    return self.hf.tokenizer.unk_token_id

  @property
  def _base_vocab_size(self) -> int:
    return self.hf.vocab_size

  def _encode(self, s: str) -> Sequence[int]:
    return self.hf.tokenizer.encode(s, add_special_tokens=False)

  def _decode(self, ids: Sequence[int]) -> str:
    return self.hf.tokenizer.decode(until_eos(ids, self.eos_id), skip_special_tokens=True)

  def _encode_tf(self, s):
    ids = tf.py_function(lambda text: tf.constant(self._encode(text.numpy().decode("utf-8")), tf.int32),
                         [s], tf.int32)
    ids.set_shape([None])
    return ids

  def _decode_tf(self, ids):
    text = tf.py_function(lambda row: tf.constant(self._decode(row.numpy().tolist())), [ids], tf.string)
    text.set_shape([])
    return text

  def __eq__(self, other) -> bool:
    return isinstance(other, HFSeqioVocabulary) and other.path == self.path

  def __hash__(self) -> int:
    return hash(self.path)
