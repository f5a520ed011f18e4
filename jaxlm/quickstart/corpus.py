"""The quickstart job: clean a corpus, train a tokenizer, pretrain, evaluate, decode, report.

    make quickstart        # = python -m jaxlm.main --gin_file=gin_configs/runs/quickstart.gin

Stages (gin_configs/runs/quickstart.gin configures every one):
  1. clean the sources (default: the embedded prose and code corpora) with
     jaxlm.data.cleaning_job's pipeline and print what each stage removed; add generated
     reasoning problems (jaxlm.data.word_problems) to the training data;
  2. train a SentencePiece tokenizer on the cleaned training split;
  3. register the SeqIO tasks and the mixture, and pretrain with jaxlm.training.trainer
     (progress bar, TensorBoard, checkpoints; Ctrl-C checkpoints and stops, and the next
     run resumes from there);
  4. evaluate: held-out perplexity and bits per byte (rolling windows) of the trained and
     the untrained model, and few-shot accuracy on held-out generated reasoning problems;
  5. decode a few prompts;
  6. write MODEL_DIR/report.md with the loss curve, the metrics table and the samples.
The tokenizer is also MODEL_DIR/vocabulary.model (instruction-tune the model with
runs/sft.gin and --gin.seqio_vocabulary.model_path pointing there: see the README).
Stages 1-2 are cached in MODEL_DIR/data/<hash of their settings>, so a rerun skips them.
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
from jaxlm.evaluation import report as report_lib
from jaxlm.jsonl import read_jsonl
from jaxlm.inference.decoding import DecodeConfig
from jaxlm.inference.infer import decode_texts

PROSE_STAGES = cleaning_job.STAGE_NAMES
CODE_STAGES = ("exact_dedup", "near_dedup", "pii")  # prose filters would drop most code
DEFAULT_PROMPTS = ("The module provides", "def read_lines(path):",
                   "Q: What number comes after 41?\nA:")


def _say(text: str) -> None:
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
    _say(f"[1/6] cleaned corpus already in {data_dir} (cached)")
    return paths
  _say(f"[1/6] cleaning {', '.join(source_specs)}")
  os.makedirs(data_dir, exist_ok=True)
  splits, reports = {"train": [], "validation": []}, {}
  for spec in source_specs:
    stages = CODE_STAGES if spec == "embedded_code" else PROSE_STAGES
    pipeline = cleaning_job.default_cleaning_pipeline(stages=stages)
    docs = _documents(spec, max_documents)
    for record in pipeline.run(docs):
      splits[_split(record, validation_percent)].append({"text": record["text"], "source": spec})
    reports[spec] = pipeline.report()
    _say(f"\n{spec}: {len(docs)} documents in, {pipeline.docs_out} kept\n{pipeline.format_report()}")
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
  _say(f"\ntrain {len(splits['train'])} / validation {len(splits['validation'])} documents, "
       f"plus {reasoning_documents} generated reasoning documents -> {data_dir}")
  return paths


def prepare_vocabulary(data_dir: str, paths: Dict[str, str], vocab_size: int, seed: int, model_dir: str):
  """Stage 2: a SentencePiece model trained on the training split (cached), copied to
  MODEL_DIR/vocabulary.model for the jobs that use the model later (sft, infer, eval)."""
  model_path = os.path.join(data_dir, f"spm_{vocab_size}.model")
  if os.path.exists(model_path):
    _say(f"[2/6] tokenizer {model_path} (cached)")
  else:
    _say(f"[2/6] training a SentencePiece tokenizer ({vocab_size} ids)")
    texts = [r["text"] for p in (paths["train"], paths["reasoning"]) for r in sources_lib.read_jsonl_documents(p)]
    vocab_lib.train_sentencepiece(texts, model_path, vocab_size=vocab_size, seed=seed)
  for suffix in ("", ".json"):
    shutil.copyfile(model_path + suffix, os.path.join(model_dir, "vocabulary.model" + suffix))
  return vocab_lib.load_vocabulary(model_path)


@gin.configurable
def register_quickstart_mixture(name: str, paths: Dict[str, str], vocabulary, objective: str = "lm",
                                reasoning_rate: float = 0.1) -> str:
  """SeqIO tasks over the cleaned corpus and the reasoning documents, mixed at fixed rates."""
  corpus = tasks_lib.register_task(f"{name}_corpus", {"train": paths["train"], "validation": paths["validation"]},
                                   objective, vocabulary)
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


def _decode(model, params, vocabulary, prompts: Sequence[str], max_new_tokens: int, max_prompt: int,
            batch_size: int) -> List[str]:
  """Greedy continuations of the prompts, cut at EOS."""
  rows = decode_texts(model, params, vocabulary, prompts, DecodeConfig(max_new_tokens=max_new_tokens),
                      batch_size=batch_size, max_prompt_length=max_prompt)
  return [r["output"] for r in rows]


def reasoning_eval(model, params, vocabulary, num_problems: int, num_shots: int, max_new_tokens: int,
                   max_prompt: int, batch_size: int, seed: int, demo_seed: int):
  """Few-shot accuracy on held-out generated problems: (metrics, [samples]). The problems
  come from the validation split with `seed`, the demonstrations from train with `demo_seed`."""
  demos = word_problems.problems(num_shots, "train", seed=demo_seed)
  problems = word_problems.problems(num_problems, "validation", seed=seed)
  prompts = [word_problems.few_shot_prompt(demos, p) for p in problems]
  outputs = [o.split("\n\n")[0].split("\nQ:")[0] for o in
             _decode(model, params, vocabulary, prompts, max_new_tokens, max_prompt, batch_size)]
  result = metrics_lib.reasoning_accuracy([p["solution"] for p in problems], outputs)
  samples = [{"question": p["question"], "output": o, "answer": p["answer"]}
             for p, o in zip(problems, outputs)]
  return {"accuracy": result["accuracy"], "problems": num_problems, "shots": num_shots}, samples


def loss_curve(model_dir: str) -> List[tuple]:
  """(step, loss) from MODEL_DIR/metrics.jsonl, the last record per step (resumed runs)."""
  path = os.path.join(model_dir, "metrics.jsonl")
  points = {}
  if os.path.exists(path):
    for _, record in read_jsonl(path):
      if "loss" in record and "step" in record:
        points[int(record["step"])] = float(record["loss"])
  return sorted(points.items())


@gin.configurable
def quickstart(model_dir: str = gin.REQUIRED,
               sources: Sequence[str] = ("embedded_prose", "embedded_code"),
               max_documents_per_source: Optional[int] = None,
               reasoning_documents: int = 2000,
               vocab_size: int = gin.REQUIRED,
               sequence_length: int = gin.REQUIRED,
               mixture_name: str = "quickstart_mix",
               eval_documents: int = 64,
               eval_tokens_per_document: int = 1024,
               validation_percent: int = 5,
               reasoning_problems: int = 32,
               num_shots: int = 2,
               reasoning_max_new_tokens: int = 24,
               prompts: Sequence[str] = DEFAULT_PROMPTS,
               max_new_tokens: int = 48,
               eval_batch_size: int = 16,
               report_reasoning_samples: int = 4,
               seed: int = 0,
               demo_seed: int = 1) -> Dict[str, Any]:
  """Runs the six stages (see the module docstring); returns the metrics, or {} when the
  training was interrupted (run again to resume).

  The training itself is `train()` as gin binds it (runs/quickstart.gin: the model, the
  steps, the learning rate, and the data: DataPipeline over `mixture_name`). Held-out
  perplexity scores the first eval_documents validation documents, each cut to
  eval_tokens_per_document words, in rolling windows of sequence_length; the reasoning
  eval asks reasoning_problems held-out problems (seed) after num_shots demonstrations
  (demo_seed) and reads up to reasoning_max_new_tokens of each answer; the report shows
  the `prompts`' continuations and report_reasoning_samples of the reasoning answers.
  validation_percent of the cleaned documents are held out."""
  from jaxlm.training.trainer import train  # pylint: disable=import-outside-toplevel
  settings = json.dumps([list(sources), max_documents_per_source, reasoning_documents, seed,
                         validation_percent])
  data_dir = os.path.join(model_dir, "data", hashlib.sha1(settings.encode()).hexdigest()[:10])
  paths = prepare_corpus(data_dir, sources, max_documents_per_source, reasoning_documents, seed,
                         validation_percent)
  vocabulary = prepare_vocabulary(data_dir, paths, vocab_size, seed, model_dir)
  register_quickstart_mixture(mixture_name, paths, vocabulary)

  _say(f"[3/6] pretraining -> {model_dir} (TensorBoard: tensorboard --logdir {model_dir}/train)")
  result = train()
  if result.preempted:
    _say(f"\nstopped at step {int(result.state.step)} and checkpointed; run the same command again to resume")
    return {}

  _say("[4/6] evaluating")
  model, params = result.model, result.state.params
  config = model.config
  untrained = model.init(jax.random.key(seed), model.dummy_batch(1, sequence_length))
  texts = [r["text"] for r in sources_lib.read_jsonl_documents(paths["validation"])][:eval_documents]
  texts = [" ".join(t.split(" ")[:eval_tokens_per_document]) for t in texts]  # bounded eval cost
  held_out = held_out_perplexity(model, params, texts, vocabulary, sequence_length, eval_batch_size)
  baseline = held_out_perplexity(model, untrained, texts, vocabulary, sequence_length, eval_batch_size)
  held_out["untrained_perplexity"] = baseline["perplexity"]
  held_out["ratio_to_untrained"] = held_out["perplexity"] / baseline["perplexity"]
  reasoning_args = dict(vocabulary=vocabulary, num_problems=reasoning_problems, num_shots=num_shots,
                        max_new_tokens=reasoning_max_new_tokens,
                        max_prompt=sequence_length - reasoning_max_new_tokens,
                        batch_size=eval_batch_size, seed=seed, demo_seed=demo_seed)
  reasoning, reasoning_samples = reasoning_eval(model, params, **reasoning_args)
  reasoning["untrained_accuracy"] = reasoning_eval(model, untrained, **reasoning_args)[0]["accuracy"]
  metrics = {"held-out text": held_out, f"reasoning ({num_shots}-shot, held-out facts)": reasoning}
  for task, values in metrics.items():
    _say(f"  {task}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                   for k, v in values.items()))

  _say("[5/6] decoding")
  outputs = _decode(model, params, vocabulary, list(prompts), max_new_tokens,
                    sequence_length - max_new_tokens, len(prompts))
  samples = [{"prompt": p, "output": o} for p, o in zip(prompts, outputs)]
  for s in samples:
    _say(f"  {s['prompt']!r} -> {s['output']!r}")

  step = int(result.state.step)
  path = report_lib.write_report(
      model_dir, metrics, loss_curve=loss_curve(model_dir),
      samples=samples + [{"kind": "reasoning", **s}
                         for s in reasoning_samples[:report_reasoning_samples]],
      title=f"jaxlm quickstart: step {step}",
      config={"model": f"{config.arch}, {config.num_layers} layers, d_model {config.d_model}, "
                       f"{model.num_params(params):,} parameters",
              "tokens seen": f"{result.tokens_seen:,}", "vocabulary": f"SentencePiece, {vocab_size} ids",
              "sources": ", ".join(sources), "mixture": mixture_name})
  _say(f"[6/6] report: {path}")
  return metrics
