"""The `infer` job: prompts file -> tokenize -> restore a checkpoint -> decode -> JSONL.

    python -m jaxlm.main --gin_file=gin_configs/runs/infer.gin \
      --gin.CHECKPOINT_DIR="'/tmp/lm'" --gin.PROMPTS="'prompts.txt'" --gin.OUTPUT="'out.jsonl'"

Prompts: a text file (one prompt per line; blank lines skipped) or JSONL (.jsonl / .json)
with a 'prompt' (or 'inputs') field per line. Output: one JSON line per prompt with the
prompt, the decoded 'output' text, its 'tokens', 'score' and 'logprob'.

Vocabularies (anything with encode(str) -> ids and decode(ids) -> str works, e.g. a seqio
vocabulary): 'byte' (seqio.ByteVocabulary's ids: byte + 3; 0 PAD, 1 EOS, 2 UNK) or the
path of a SentencePiece model (T5 layout: 0 PAD, 1 EOS, 2 UNK). Core only: no TensorFlow.

Checkpoints: any layout `jaxlm.training.checkpointing.restore_params` reads.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, List, Optional, Sequence, Union

import gin
import jax
import numpy as np

from jaxlm.inference.decoding import DecodeConfig, generate, until_eos
from jaxlm.models import TransformerConfig, build_model
from jaxlm.training.checkpointing import restore_params

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2


# ---- vocabularies ----
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


def get_vocabulary(vocabulary: Union[str, Any]):
  """'byte', a SentencePiece model path, or an object with encode/decode (returned as is)."""
  if not isinstance(vocabulary, str):
    return vocabulary
  if vocabulary == "byte":
    return ByteVocab()
  if not os.path.exists(vocabulary):
    raise FileNotFoundError(f"vocabulary {vocabulary!r}: not 'byte' and no such SentencePiece model")
  return SentencePieceVocab(vocabulary)


# ---- prompts ----
def read_prompts(path: str) -> List[str]:
  """Prompts of a text file (one a line) or a JSONL file ('prompt' or 'inputs' per line)."""
  with open(path, encoding="utf-8") as f:
    lines = f.read().splitlines()
  if not path.endswith((".jsonl", ".json")):
    return [line for line in lines if line.strip()]
  prompts = []
  for n, line in enumerate(lines, 1):
    if not line.strip():
      continue
    row = json.loads(line)
    key = "prompt" if "prompt" in row else "inputs" if "inputs" in row else None
    if key is None:
      raise ValueError(f"{path}:{n}: no 'prompt' field; have {sorted(row)}")
    prompts.append(row[key])
  return prompts


def tokenize_prompts(model, vocab, prompts: Sequence[str], *, add_eos: bool, max_prompt_length=None,
                     bucket: int = 16):
  """numpy (prompt, prompt_mask) for decoders (BOS + text, the tail kept when too long) or
  (None, None, encoder_input_tokens) for encoder-decoders."""
  eos = getattr(vocab, "eos_id", EOS_ID)
  rows = [list(vocab.encode(p)) + ([eos] if add_eos else []) for p in prompts]
  enc_dec = model.config.arch == "encoder_decoder"
  if max_prompt_length:
    keep = max_prompt_length if enc_dec else max(0, max_prompt_length - 1)  # decoders: + BOS
    rows = [r[:keep] if enc_dec else r[len(r) - keep:] for r in rows]
  if not enc_dec:
    rows = [[PAD_ID] + r for r in rows]
  width = max(1, max(map(len, rows)))
  width = -(-width // bucket) * bucket if bucket > 1 else width
  tokens = np.zeros((len(rows), width), np.int32)
  for i, r in enumerate(rows):
    tokens[i, :len(r)] = r
  if enc_dec:
    return None, None, tokens
  lengths = np.array([len(r) for r in rows])
  return tokens, (np.arange(width)[None] < lengths[:, None]).astype(np.int32), None


def decode_texts(model, params, vocab, prompts: Sequence[str], decoding: Optional[DecodeConfig] = None, *,
                 batch_size: int = 8, max_new_tokens: int = 64, max_prompt_length: Optional[int] = None,
                 add_eos: Optional[bool] = None) -> List[dict]:
  """Decodes text prompts in batches of batch_size (the last padded: one compilation).

  decoding: DecodeConfig (its max_new_tokens, else max_new_tokens). add_eos: append EOS to
  each prompt (default: True for encoder-decoders, as T5 inputs end with EOS; False for
  decoders). Returns one row per prompt: 'prompt', the decoded 'output' (cut at EOS), its
  'tokens', 'score' and 'logprob' (beam search: of the best hypothesis).
  """
  decoding = decoding or DecodeConfig()
  add_eos = model.config.arch == "encoder_decoder" if add_eos is None else add_eos
  n = decoding.max_new_tokens or max_new_tokens
  kw = {k: v for k, v in dataclasses.asdict(decoding).items()
        if k not in ("max_new_tokens", "seed", "prompt_bucket")}
  key = jax.random.key(decoding.seed)
  rows = []
  for start in range(0, len(prompts), batch_size):
    chunk = list(prompts[start:start + batch_size])
    padded = chunk + [""] * (batch_size - len(chunk))  # one shape for every batch
    prompt, mask, enc = tokenize_prompts(model, vocab, padded, add_eos=add_eos,
                                         max_prompt_length=max_prompt_length,
                                         bucket=decoding.prompt_bucket)
    out = generate(model, params, prompt, mask, enc, max_new_tokens=n,
                   rng=jax.random.fold_in(key, start), **kw)
    tokens, scores, logprobs = (np.asarray(x) for x in (out.tokens, out.scores, out.logprobs))
    if tokens.ndim == 3:  # beam search: the best hypothesis
      tokens, scores, logprobs = tokens[:, 0], scores[:, 0], logprobs[:, 0]
    for i, text in enumerate(chunk):
      ids = until_eos(tokens[i], decoding.eos_id)
      rows.append({"prompt": text, "output": vocab.decode(ids), "tokens": ids,
                   "score": float(scores[i]), "logprob": float(logprobs[i])})
  return rows


@gin.configurable
def infer(prompts_path: str = gin.REQUIRED, output_path: str = gin.REQUIRED,
          checkpoint_dir: Optional[str] = gin.REQUIRED, step: Optional[int] = None,
          vocabulary: Union[str, Any] = "byte", config: Optional[TransformerConfig] = None,
          decoding: Optional[DecodeConfig] = None, batch_size: int = 8,
          max_prompt_length: Optional[int] = None, add_eos: Optional[bool] = None,
          default_max_new_tokens: int = 64, params=None) -> List[dict]:
  """Decodes every prompt of prompts_path with the checkpoint's model; writes output_path.

  config: the model (default: TransformerConfig() as gin binds it). decoding: DecodeConfig
  (its max_new_tokens, or default_max_new_tokens). add_eos: append EOS to each prompt
  (default: True for encoder-decoders, as T5 inputs end with EOS; False for decoders).
  params: use these instead of restoring checkpoint_dir (tests, notebooks).
  Returns the rows written.
  """
  model = build_model(config or TransformerConfig())
  vocab = get_vocabulary(vocabulary)
  if getattr(vocab, "vocab_size", 0) > model.config.vocab_size:
    raise ValueError(f"the vocabulary has {vocab.vocab_size} ids but TransformerConfig.vocab_size="
                     f"{model.config.vocab_size}")
  if params is None:
    if checkpoint_dir is None:
      raise ValueError("infer needs checkpoint_dir (or params)")
    params = restore_params(checkpoint_dir, model.param_shapes(), step)
  rows = decode_texts(model, params, vocab, read_prompts(prompts_path), decoding, batch_size=batch_size,
                      max_new_tokens=default_max_new_tokens, max_prompt_length=max_prompt_length,
                      add_eos=add_eos)
  if os.path.dirname(output_path):
    os.makedirs(os.path.dirname(output_path), exist_ok=True)
  with open(output_path, "w", encoding="utf-8") as f:
    for row in rows:
      f.write(json.dumps(row, ensure_ascii=False) + "\n")
  return rows
