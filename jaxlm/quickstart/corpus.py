"""Stages 1-2 of the quickstart: the cleaned corpus and its tokenizer (cached), the
pretraining mixture, and the held-out perplexity and loss curves the report reads.

prepare_corpus cleans the sources with jaxlm.data.cleaning_job's pipeline, prints what each
cleaning stage removed, and adds generated reasoning documents (jaxlm.data.word_problems);
prepare_vocabulary trains a SentencePiece tokenizer on the training split, with the chat
role and end-of-turn markers (jaxlm.data.instructions.CHAT_SYMBOLS) reserved as single
pieces for the instruction stages. Both are cached in MODEL_DIR/data/<hash of settings>.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import shutil
from typing import Any, Dict, List, Optional, Sequence

import gin
import jax

from jaxlm.data import cleaning_job, word_problems
from jaxlm.data import sources as sources_lib
from jaxlm.data import tasks as tasks_lib
from jaxlm.data import vocab as vocab_lib
from jaxlm.evaluation import metrics as metrics_lib
from jaxlm.jsonl import read_jsonl

PROSE_STAGES = cleaning_job.STAGE_NAMES
CODE_STAGES = ("exact_dedup", "near_dedup", "pii")  # prose filters would drop most code


def say(text: str) -> None:
  print(text, flush=True)


def _write_jsonl(path: str, records) -> None:
  sources_lib.atomic_write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def _split(record: Dict[str, Any], validation_percent: int) -> str:
  key = str(record.get("id") or hashlib.sha1(record["text"].encode("utf-8")).hexdigest())
  return sources_lib.split_of(key, validation_percent)


def _documents(spec: str, limit: Optional[int]) -> List[Dict[str, Any]]:
  docs = [d for d in sources_lib.iter_documents(spec, split=None) if d.get("text", "").strip()]
  return docs[:limit] if limit else docs


def prepare_corpus(data_dir: str, source_specs: Sequence[str], max_documents: Optional[int],
                   reasoning_documents: int, seed: int, validation_percent: int) -> Dict[str, str]:
  """Stage 1: cleaned train/validation JSONL per source plus generated reasoning documents.
  Returns {'train', 'validation', 'reasoning'} paths; skips the work if already done."""
  paths = {s: os.path.join(data_dir, f"{s}.jsonl") for s in ("train", "validation", "reasoning")}
  report_path = os.path.join(data_dir, "cleaning_report.json")
  if all(os.path.exists(p) for p in [*paths.values(), report_path]):
    say(f"[1/7] cleaned corpus already in {data_dir} (cached)")
    return paths
  say(f"[1/7] cleaning {', '.join(source_specs)}")
  os.makedirs(data_dir, exist_ok=True)
  splits, reports = {"train": [], "validation": []}, {}
  for spec in source_specs:
    stages = CODE_STAGES if spec == "embedded_code" else PROSE_STAGES
    pipeline = cleaning_job.default_cleaning_pipeline(stages=stages)
    docs = _documents(spec, max_documents)
    for record in pipeline.run(docs):
      splits[_split(record, validation_percent)].append({"text": record["text"], "source": spec})
    reports[spec] = pipeline.report()
    say(f"\n{spec}: {len(docs)} documents in, {pipeline.docs_out} kept\n{pipeline.format_report()}")
  if not splits["validation"] and len(splits["train"]) > 1:  # a small corpus still gets one
    splits["validation"].append(splits["train"].pop())
  for split, records in splits.items():
    if not records:
      raise ValueError(f"no {split} documents left after cleaning {list(source_specs)}; "
                       f"give more documents (quickstart.max_documents_per_source)")
    random.Random(seed).shuffle(records)
    _write_jsonl(paths[split], records)
  _write_jsonl(paths["reasoning"], word_problems.documents(reasoning_documents, "train", seed=seed))
  sources_lib.atomic_write(report_path, json.dumps(reports, indent=1))
  say(f"\ntrain {len(splits['train'])} / validation {len(splits['validation'])} documents, "
       f"plus {reasoning_documents} generated reasoning documents -> {data_dir}")
  return paths


def prepare_vocabulary(data_dir: str, paths: Dict[str, str], vocab_size: int, seed: int, model_dir: str):
  """Stage 2: a SentencePiece model trained on the training split (cached), copied to
  MODEL_DIR/vocabulary.model for the jobs that use the model later (sft, infer, eval)."""
  model_path = os.path.join(data_dir, f"spm_{vocab_size}.model")
  if os.path.exists(model_path):
    say(f"[2/7] tokenizer {model_path} (cached)")
  else:
    say(f"[2/7] training a SentencePiece tokenizer ({vocab_size} ids)")
    texts = [r["text"] for p in (paths["train"], paths["reasoning"]) for r in sources_lib.read_jsonl_documents(p)]
    vocab_lib.train_sentencepiece(texts, model_path, vocab_size=vocab_size, seed=seed)
  for suffix in ("", ".json"):
    shutil.copyfile(model_path + suffix, os.path.join(model_dir, "vocabulary.model" + suffix))
  return vocab_lib.load_vocabulary(model_path)


@gin.configurable
def register_quickstart_mixture(name: str, paths: Dict[str, str], vocabulary, objective: str = "lm",
                                reasoning_rate: float = 0.1) -> str:
  """SeqIO tasks over the cleaned corpus and the reasoning documents, mixed at fixed rates;
  also `<name>_corpus_as_targets`, the corpus as instruction-shaped LM rows (empty inputs)
  that instruction tuning mixes in so that the model keeps its text."""
  splits = {"train": paths["train"], "validation": paths["validation"]}
  corpus = tasks_lib.register_task(f"{name}_corpus", splits, objective, vocabulary)
  tasks_lib.register_task(f"{name}_corpus_as_targets", splits, "lm_as_targets", vocabulary)
  reasoning = tasks_lib.register_task(f"{name}_reasoning", {"train": paths["reasoning"]}, objective, vocabulary)
  tasks_lib.register_mixture(name, [corpus.name, reasoning.name], "fixed",
                             rates=[1.0 - reasoning_rate, reasoning_rate])
  return name


@functools.partial(jax.jit, static_argnums=0)
def _token_logprobs(model, params, inputs, targets):
  """log p(targets[i] | inputs[:i + 1]) per position [b, t], by the model's score_batch
  (0 at padding targets; rolling_loglikelihood weights the positions it scores)."""
  return model.score_batch(params, {"decoder_input_tokens": inputs, "decoder_target_tokens": targets},
                           per_token=True)


def held_out_perplexity(model, params, texts: Sequence[str], vocabulary, length: int, batch_size: int):
  """Perplexity, bits per byte and tokens scored of the texts (rolling windows of length)."""
  out = metrics_lib.evaluate_perplexity(texts, vocabulary.encode,
                                        functools.partial(_token_logprobs, model, params), length,
                                        prefix_token=0, batch_size=batch_size)
  return {k: out[k] for k in ("perplexity", "bits_per_byte", "num_tokens")}


def loss_curve(model_dir: str) -> List[tuple]:
  """(step, loss) from MODEL_DIR/metrics.jsonl, the last record per step (resumed runs)."""
  path = os.path.join(model_dir, "metrics.jsonl")
  points = {}
  if os.path.exists(path):
    for _, record in read_jsonl(path):
      if "loss" in record and "step" in record:
        points[int(record["step"])] = float(record["loss"])
  return sorted(points.items())
