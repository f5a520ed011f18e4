"""jaxlm models inside EleutherAI's lm-evaluation-harness: the `jaxlm` model of lm-eval.

    python -m jaxlm.evaluation.lm_eval --model jaxlm --model_args hf_dir=/models/gpt2 \\
      --tasks my_task --include_path /data/tasks --batch_size 8

runs lm-eval's own command line (every argument is lm-eval's) once this module has
registered the `jaxlm` model, so nothing in lm-eval is edited. From Python:

    lm = JaxlmLM(hf_dir="/models/gpt2", batch_size=8)
    lm_eval.simple_evaluate(model=lm, tasks=["my_task"], task_manager=TaskManager(include_path=...))

Model arguments (`--model_args k=v,...` or the constructor's keywords):
  hf_dir          a Hugging Face directory (GPT-2, LLaMA): weights through convert.load_hf,
                  the directory's own tokenizer (transformers.AutoTokenizer, local files);
  adapter_dir     with hf_dir: a peft LoRA adapter, merged into the weights;
  checkpoint_dir  or a jaxlm checkpoint, with `gin_file` (the model's gin file; several
                  joined by '+') and `vocabulary` ('byte' or a SentencePiece model path,
                  as infer.gin's VOCABULARY); `step` (None: the latest);
  dtype           parameters and computation (float32);
  batch_size      requests per model call (on lm-eval's command line: --batch_size, which
                  lm-eval always passes; not in --model_args); max_length (the model's max_len),
  max_gen_toks    (256), length_bucket (16: rows are padded to a multiple of it), seed.

Semantics are lm-eval's HFLM's (lm_eval/models/huggingface.py), request by request:
`loglikelihood` splits context and continuation as TemplateLM does, scores the last
max_length + 1 tokens and reports whether every continuation token is the argmax
(`is_greedy`); `loglikelihood_rolling` scores a document in disjoint windows of
max_length tokens, the first predicted from the prefix token (lm-eval's
get_rolling_token_windows with context_len=1; jaxlm.evaluation.metrics.rolling_windows
builds them); `generate_until` decodes max_gen_toks tokens greedily or by sampling
(do_sample, temperature, top_k, top_p) with jaxlm's decoder, stops at EOS and cuts the
text at the first stop sequence. A Hugging Face tokenizer encodes as HFLM does; a jaxlm
vocabulary puts jaxlm's BOS 0 first (the prefix token), as the model saw in training.

Batching (jaxlm.evaluation.lm_eval_batching): requests are sorted by length, cut into
batches of batch_size, and each batch is padded to a multiple of length_bucket tokens and
to batch_size rows, so a task compiles a handful of shapes. Padding is never attended by
a real token and results come back in the requests' order, so they do not depend on the
batch size.
"""
from __future__ import annotations

import dataclasses
import sys
from typing import List, Optional, Sequence, Union

import jax
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import (Collator, handle_stop_sequences, has_bos_prefix, normalize_gen_kwargs,
                                  postprocess_generated_text)

from jaxlm.evaluation import lm_eval_batching as batching
from jaxlm.evaluation.metrics import rolling_windows
from jaxlm.inference.decoding import DecodeConfig, round_up_to_bucket
from jaxlm.vocabularies import PAD_ID, get_vocabulary, until_eos

GEN_KWARGS = ("until", "max_gen_toks", "do_sample", "temperature", "top_k", "top_p")


def load_gin_model(gin_file: Union[str, Sequence[str]], gin_bindings: Union[str, Sequence[str]] = ()):
  """TransformerConfig as the gin files ('+'-joined or a list) and bindings (';'-joined or
  a list) bind it, parsed as jaxlm.main parses run files; the gin config is cleared after."""
  import gin  # pylint: disable=import-outside-toplevel
  from jaxlm import main  # pylint: disable=import-outside-toplevel
  from jaxlm.models import TransformerConfig  # pylint: disable=import-outside-toplevel
  files = gin_file.split("+") if isinstance(gin_file, str) else list(gin_file)
  bindings = [b for b in gin_bindings.split(";") if b.strip()] if isinstance(gin_bindings, str) else list(gin_bindings)
  main.parse_gin(files, bindings)
  try:
    return TransformerConfig()
  finally:
    gin.clear_config()


@register_model("jaxlm")
class JaxlmLM(TemplateLM):
  """A jaxlm model (a Hugging Face directory or a jaxlm checkpoint) as an lm-eval LM; see
  the module docstring for the arguments. `model`, `params` and `tokenizer` (a
  transformers tokenizer or a jaxlm vocabulary) may be given ready instead (tests,
  notebooks, the holistic report)."""

  def __init__(self, hf_dir: Optional[str] = None, checkpoint_dir: Optional[str] = None,
               gin_file: Union[str, Sequence[str], None] = None, gin_bindings: Union[str, Sequence[str]] = (),
               vocabulary: str = "byte", step: Optional[int] = None, adapter_dir: Optional[str] = None,
               dtype: str = "float32", batch_size: Union[int, str] = 8, max_length: Optional[int] = None,
               max_gen_toks: int = 256, length_bucket: int = 16, seed: int = 0,
               add_bos_token: Optional[bool] = None, model=None, params=None, tokenizer=None,
               device: Optional[str] = None, max_batch_size: Optional[int] = None):
    super().__init__()
    del device, max_batch_size  # jax places arrays itself; the batch size is fixed
    if str(batch_size).startswith("auto"):
      raise ValueError(f"jaxlm model_args batch_size={batch_size!r}: give a number (a fixed size keeps the "
                       "compiled shapes few and the results independent of it)")
    from jaxlm.training.checkpointing import restore_model  # pylint: disable=import-outside-toplevel
    if model is None:
      config = None
      if checkpoint_dir and not hf_dir:
        if not gin_file:
          raise ValueError(f"jaxlm model_args checkpoint_dir={checkpoint_dir!r} needs gin_file (the model's gin "
                           "file, e.g. gin_configs/models/tiny_decoder.gin)")
        config = load_gin_model(gin_file, gin_bindings)
      model, params = restore_model(checkpoint_dir, config, None if step is None else int(step), hf_dir=hf_dir,
                                    adapter_dir=adapter_dir, dtype=dtype)
    if model.config.arch != "decoder":
      raise ValueError(f"the jaxlm lm-eval model runs decoder-only models; this one has arch={model.config.arch!r}")
    if tokenizer is None and hf_dir:
      import transformers  # pylint: disable=import-outside-toplevel
      tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir, local_files_only=True)
    elif tokenizer is None:
      tokenizer = get_vocabulary(vocabulary)
    self.model, self.params = model, params
    self.hf = hasattr(tokenizer, "convert_tokens_to_ids")  # a transformers tokenizer
    self.tokenizer = tokenizer if self.hf else None  # lm-eval reads it for chat templates
    self.vocab = tokenizer
    self.add_bos_token = add_bos_token
    self._batch_size = int(batch_size)
    self._max_length = int(max_length or model.config.max_len)
    self._max_gen_toks = int(max_gen_toks)
    self.length_bucket, self.seed = int(length_bucket), int(seed)
    self.name = hf_dir or checkpoint_dir or "jaxlm"

  # ---- what lm-eval reads ----
  @property
  def eot_token_id(self) -> int:
    return self.vocab.eos_token_id if self.hf else getattr(self.vocab, "eos_id", 1)

  @property
  def prefix_token_id(self) -> int:
    if not self.hf:
      return PAD_ID  # jaxlm's BOS
    return self.vocab.bos_token_id if self.vocab.bos_token_id is not None else self.vocab.eos_token_id

  @property
  def max_length(self) -> int:
    return self._max_length

  @property
  def max_gen_toks(self) -> int:
    return self._max_gen_toks

  @property
  def batch_size(self) -> int:
    return self._batch_size

  @property
  def tokenizer_name(self) -> str:
    return getattr(self.vocab, "name_or_path", type(self.vocab).__name__).replace("/", "__")

  def tok_encode(self, string: str, add_special_tokens: Optional[bool] = None, left_truncate_len=None,
                 **kwargs) -> List[int]:
    """HFLM.tok_encode for a transformers tokenizer; a jaxlm vocabulary's ids after BOS 0
    (none with add_special_tokens=False)."""
    del kwargs
    if self.hf:
      special = {} if add_special_tokens is None and self.add_bos_token is None else {
          "add_special_tokens": self.add_bos_token if add_special_tokens is None else add_special_tokens}
      if add_special_tokens is None and has_bos_prefix(string, self.vocab.decode(self.prefix_token_id)):
        special["add_special_tokens"] = False
      ids = list(self.vocab.encode(string, **special))
    else:
      ids = ([] if add_special_tokens is False else [PAD_ID]) + list(self.vocab.encode(string))
    return ids[-left_truncate_len:] if left_truncate_len else ids

  def tok_decode(self, ids: Sequence[int]) -> str:
    ids = until_eos(ids, self.eot_token_id)
    return self.vocab.decode(ids, skip_special_tokens=True) if self.hf else self.vocab.decode(ids)

  # ---- the three request types ----
  def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
    """[(log p(continuation | context), is_greedy)] of ((context, continuation), context ids,
    continuation ids) requests, in their order."""
    del disable_tqdm, kwargs
    rows = []
    for _, context, continuation in requests:
      whole = (list(context) + list(continuation))[-(self.max_length + 1):]
      rows.append(batching.ScoredRow(whole[:-1], whole[1:], len(continuation)))
    scored = self._score(rows)
    return [(float(logp.sum()), bool(greedy.all())) for logp, greedy in scored]

  def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> List[float]:
    """The summed log-likelihood of each request's whole document (disjoint windows)."""
    del disable_tqdm
    rows, owners = [], []
    for i, req in enumerate(requests):
      (string,) = req.args
      tokens = self.tok_encode(string) if self.hf else self.tok_encode(string, add_special_tokens=False)
      for w in rolling_windows(tokens, self.max_length, prefix_token=self.prefix_token_id):
        rows.append(batching.ScoredRow(w.inputs, w.targets, w.num_scored))
        owners.append(i)
    totals = [0.0] * len(requests)
    for i, (logp, _) in zip(owners, self._score(rows)):
      totals[i] += float(logp.sum())
    for req, total in zip(requests, totals):
      self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
    return totals

  def generate_until(self, requests, disable_tqdm: bool = False) -> List[str]:
    """Each request's generated text, cut at its first stop sequence."""
    del disable_tqdm
    collator = Collator([req.args for req in requests], sort_fn=lambda r: (-len(self.tok_encode(r[0])), r[0]),
                        group_by="gen_kwargs", group_fn=lambda r: r[1])
    eos = self.vocab.decode([self.eot_token_id]) if self.hf else ""
    out = []
    for n, chunk in enumerate(collator.get_batched(n=self.batch_size)):
      contexts, gen_kwargs = zip(*chunk)
      config, until = self._decode_config(gen_kwargs[0], eos)
      room = self.max_length - config.max_new_tokens
      if room <= 0:
        raise ValueError(f"max_gen_toks={config.max_new_tokens} leaves no room for a prompt in max_length="
                         f"{self.max_length} tokens")
      prompts = [self.tok_encode(c, left_truncate_len=room) for c in contexts]
      tokens = batching.generate(self.model, self.params, prompts, config, self.batch_size,
                                 min(room, round_up_to_bucket(max(map(len, prompts)), self.length_bucket)),
                                 jax.random.fold_in(jax.random.key(self.seed), n))
      for context, ids, kwargs in zip(contexts, tokens, gen_kwargs):
        text = postprocess_generated_text(self.tok_decode(ids), until, None)
        self.cache_hook.add_partial("generate_until", (context, kwargs), text)
        out.append(text)
    return collator.get_original(out)

  def _decode_config(self, gen_kwargs: dict, eos: str):
    """(DecodeConfig, stop sequences) of a request's generation kwargs, as HFLM reads them."""
    kwargs = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
    unknown = sorted(set(kwargs) - set(GEN_KWARGS))
    if unknown:
      raise ValueError(f"generation kwargs {unknown} are not supported by the jaxlm model (it reads {GEN_KWARGS})")
    until = handle_stop_sequences(kwargs.pop("until", None), eos=eos or None)
    sample = bool(kwargs.get("do_sample")) and float(kwargs.get("temperature", 0.0)) > 0.0
    config = DecodeConfig(method="sample" if sample else "greedy", max_new_tokens=int(kwargs["max_gen_toks"]),
                          temperature=float(kwargs.get("temperature") or 1.0), top_k=int(kwargs.get("top_k") or 0),
                          top_p=float(kwargs.get("top_p") or 1.0), eos_id=self.eot_token_id, prompt_bucket=1)
    return config, until

  def _score(self, rows: List["batching.ScoredRow"]):
    """(log-probabilities, is-argmax) of each row's scored tokens, in the rows' order."""
    return batching.score_rows(self.model, self.params, rows, self.batch_size, self.length_bucket, self.max_length)

  def get_model_info(self) -> dict:
    return {"model_num_parameters": self.model.num_params(self.params), "model_dtype": self.model.config.dtype,
            "model_name": self.name}


def main(argv: Optional[Sequence[str]] = None):
  """lm-eval's command line with the `jaxlm` model registered: `python -m
  jaxlm.evaluation.lm_eval <lm-eval's arguments> --model jaxlm --model_args ...`."""
  from lm_eval.__main__ import cli_evaluate  # pylint: disable=import-outside-toplevel
  sys.argv = ["lm-eval", *(sys.argv[1:] if argv is None else argv)]
  cli_evaluate()


if __name__ == "__main__":
  main()
