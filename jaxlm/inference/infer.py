"""The `infer` job: prompts file -> tokenize -> restore a checkpoint -> decode -> JSONL.

    python -m jaxlm.main --gin_file=gin_configs/runs/infer.gin \
      --gin.CHECKPOINT_DIR="'/tmp/lm'" --gin.PROMPTS="'prompts.txt'" --gin.OUTPUT="'out.jsonl'"

Prompts: a text file (one prompt per line; blank lines skipped) or JSONL (.jsonl / .json)
with a 'prompt' (or 'inputs') field per line. Output: one JSON line per prompt with the
prompt, the decoded 'output' text, its 'tokens', 'score' and 'logprob'.

Vocabularies (anything with encode(str) -> ids and decode(ids) -> str works, e.g. a seqio
vocabulary): 'byte' (seqio.ByteVocabulary's ids: byte + 3; 0 PAD, 1 EOS, 2 UNK) or the
path of a SentencePiece model (T5 layout: 0 PAD, 1 EOS, 2 UNK); see `jaxlm.vocabularies`.
Core only: no TensorFlow.

Checkpoints: any layout `jaxlm.training.checkpointing.restore_params` reads, or a Hugging
Face directory (hf_dir: config.json, weights and tokenizer files; the model's config and
its tokenizer come from there, see :class:`HFTokenizerVocab`).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, List, Optional, Sequence, Union

import gin
import jax
import numpy as np

from jaxlm.inference.decoding import DecodeConfig, best_hypotheses, generate, round_up_to_bucket
from jaxlm.jsonl import FormatError, read_jsonl
from jaxlm.models import TransformerConfig, build_model
from jaxlm.training.checkpointing import restore_model
from jaxlm.vocabularies import EOS_ID, PAD_ID, HFTokenizerVocab, get_vocabulary, until_eos


# ---- prompts ----
def read_prompts(path: str) -> List[str]:
  """Prompts of a text file (one a line) or a JSONL file ('prompt' or 'inputs' per line);
  a malformed line raises :class:`jaxlm.jsonl.FormatError` naming the file and line."""
  if not path.endswith((".jsonl", ".json", ".jsonl.gz")):
    with open(path, encoding="utf-8") as f:
      return [line for line in f.read().splitlines() if line.strip()]
  prompts = []
  for n, row in read_jsonl(path):
    key = "prompt" if "prompt" in row else "inputs" if "inputs" in row else None
    if key is None or not isinstance(row[key], str):
      raise FormatError(path, n, f"no string 'prompt' (or 'inputs') field; have {sorted(row)}")
    prompts.append(row[key])
  return prompts


def tokenize_prompts(model, vocab, prompts: Sequence[str], *, add_eos: bool, prompt_bucket: int,
                     max_prompt_length=None):
  """numpy (prompt, prompt_mask, None) for decoders (BOS + text, the tail kept when too long;
  the BOS is the vocabulary's `decoder_prefix`, default jaxlm's 0) or (None, None,
  encoder_input_tokens) for encoder-decoders; the width is the longest row rounded up to
  prompt_bucket."""
  eos = getattr(vocab, "eos_id", EOS_ID)
  rows = [list(vocab.encode(p)) + ([eos] if add_eos else []) for p in prompts]
  enc_dec = model.config.arch == "encoder_decoder"
  prefix = [] if enc_dec else list(getattr(vocab, "decoder_prefix", (PAD_ID,)))
  if max_prompt_length:
    keep = max_prompt_length if enc_dec else max(0, max_prompt_length - len(prefix))
    rows = [r[:keep] if enc_dec else r[max(0, len(r) - keep):] for r in rows]
  rows = [prefix + r for r in rows]
  width = round_up_to_bucket(max(1, max(map(len, rows))), prompt_bucket)
  tokens = np.zeros((len(rows), width), np.int32)
  for i, r in enumerate(rows):
    tokens[i, :len(r)] = r
  if enc_dec:
    return None, None, tokens
  lengths = np.array([len(r) for r in rows])
  return tokens, (np.arange(width)[None] < lengths[:, None]).astype(np.int32), None


def decode_texts(model, params, vocab, prompts: Sequence[str], decoding: Optional[DecodeConfig] = None, *,
                 batch_size: int = 8, max_prompt_length: Optional[int] = None,
                 add_eos: Optional[bool] = None) -> List[dict]:
  """Decodes text prompts in batches of batch_size (the last padded: one compilation).

  decoding: DecodeConfig (default: DecodeConfig() as gin binds it); it needs max_new_tokens.
  add_eos: append EOS to each prompt (default: True for encoder-decoders, as T5 inputs end
  with EOS; False for decoders). Returns one row per prompt: 'prompt', the decoded 'output'
  (cut at EOS), its 'tokens', 'score' and 'logprob' (beam search: of the best hypothesis).
  """
  decoding = decoding or DecodeConfig()
  add_eos = model.config.arch == "encoder_decoder" if add_eos is None else add_eos
  key = jax.random.key(decoding.seed)
  rows = []
  for start in range(0, len(prompts), batch_size):
    chunk = list(prompts[start:start + batch_size])
    padded = chunk + [""] * (batch_size - len(chunk))  # one shape for every batch
    prompt, mask, enc = tokenize_prompts(model, vocab, padded, add_eos=add_eos,
                                         prompt_bucket=decoding.prompt_bucket,
                                         max_prompt_length=max_prompt_length)
    out = best_hypotheses(generate(model, params, prompt, mask, enc, config=decoding,
                                   rng=jax.random.fold_in(key, start)))
    tokens, scores, logprobs = (np.asarray(x) for x in (out.tokens, out.scores, out.logprobs))
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
          tools: Sequence[str] = (), params=None, hf_dir: Optional[str] = None,
          adapter_dir: Optional[str] = None) -> List[dict]:
  """Decodes every prompt of prompts_path with the checkpoint's model; writes output_path.

  hf_dir: a Hugging Face directory instead of checkpoint_dir (infer.gin's HF_DIR): the model
  config, the weights (convert.load_hf; adapter_dir: a peft LoRA adapter merged into them)
  and the tokenizer (HFTokenizerVocab; decoding stops at its EOS) come from it, and
  `config` and `vocabulary` are not read.

  config: the model (default: TransformerConfig() as gin binds it). decoding: DecodeConfig
  (default: DecodeConfig() as gin binds it; it needs max_new_tokens, which infer.gin binds
  to MAX_NEW_TOKENS). batch_size, max_prompt_length, add_eos: as decode_texts's.
  tools: names of jaxlm.prompting.tools tools (e.g. ['calc']) run when the model writes a
  call (<calc>12*7</calc>), their results put into the KV cache before decoding resumes
  (decoder-only models; greedy or sampling; the rows gain 'calls').
  params: use these instead of restoring checkpoint_dir (tests, notebooks).
  Returns the rows written.
  """
  decoding = decoding or DecodeConfig()
  if decoding.max_new_tokens is None:
    raise ValueError("infer needs DecodeConfig.max_new_tokens (infer.gin binds it to MAX_NEW_TOKENS)")
  if hf_dir:
    vocab = HFTokenizerVocab(hf_dir)
    model, params = restore_model(hf_dir=hf_dir, adapter_dir=adapter_dir)
    if decoding.eos_id is not None:
      decoding = dataclasses.replace(decoding, eos_id=vocab.eos_id)
  else:
    model = build_model(config or TransformerConfig())
    vocab = get_vocabulary(vocabulary)
  if getattr(vocab, "vocab_size", 0) > model.config.vocab_size:
    raise ValueError(f"the vocabulary has {vocab.vocab_size} ids but TransformerConfig.vocab_size="
                     f"{model.config.vocab_size}")
  if params is None:
    if checkpoint_dir is None:
      raise ValueError("infer needs checkpoint_dir (or hf_dir, or params)")
    model, params = restore_model(checkpoint_dir, model.config, step)
  if tools:
    if model.config.arch == "encoder_decoder" or decoding.method == "beam":
      raise ValueError(f"infer.tools={list(tools)} runs tools while a decoder-only model decodes greedily or by "
                       f"sampling (arch={model.config.arch!r}, DecodeConfig.method={decoding.method!r}); "
                       "set TOOLS=[] (infer.tools) to decode without them")
    from jaxlm.prompting.tools import decode_with_tools  # pylint: disable=import-outside-toplevel
    rows = decode_with_tools(model, params, vocab, read_prompts(prompts_path), decoding, tools,
                             batch_size=batch_size, max_prompt_length=max_prompt_length)
  else:
    rows = decode_texts(model, params, vocab, read_prompts(prompts_path), decoding, batch_size=batch_size,
                        max_prompt_length=max_prompt_length, add_eos=add_eos)
  if os.path.dirname(output_path):
    os.makedirs(os.path.dirname(output_path), exist_ok=True)
  with open(output_path, "w", encoding="utf-8") as f:
    for row in rows:
      f.write(json.dumps(row, ensure_ascii=False) + "\n")
  return rows
