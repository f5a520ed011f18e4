"""quickstart(): the seven stages in order, the time each took, and the report."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from typing import Any, Dict, List, Optional, Sequence

import gin
import jax
import numpy as np

from jaxlm.data import sources as sources_lib
from jaxlm.evaluation import report as report_lib
from jaxlm.models import TransformerConfig
from jaxlm.quickstart import stages as stages_lib
from jaxlm.quickstart import suite as suite_lib
from jaxlm.quickstart.corpus import (loss_curve, prepare_corpus, prepare_vocabulary, register_quickstart_mixture,
                                     say)

DEFAULT_PROMPTS = ("The module provides", "def read_lines(path):", "Q: What number comes after 41?\nA:")
STOPPED = "stopped at step {step} of the {stage} stage and checkpointed; run the same command again to resume"


def _stopped(stage_dir: str, name: str) -> Dict[str, Any]:
  say("\n" + STOPPED.format(step=stages_lib.last_checkpoint(stage_dir), stage=name))
  return {}


def _cached_eval(path: str, key: str, compute):
  """compute() -> (metrics, samples, seconds), stored at `path` under `key` (the stage's
  checkpoint and the suite settings): a rerun does not evaluate a stage twice."""
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      saved = json.load(f)
    if saved.get("key") == key:
      return saved["metrics"], saved["samples"], saved["seconds"], True
  start = time.time()
  metrics, samples = compute()
  seconds = time.time() - start
  os.makedirs(os.path.dirname(path), exist_ok=True)
  sources_lib.atomic_write(path, json.dumps({"key": key, "metrics": metrics, "samples": samples, "seconds": seconds}))
  return metrics, samples, seconds, False


def _change(label: str, before: Dict[str, Any], after: Dict[str, Any], metric: str,
            baseline: Optional[str] = None) -> tuple:
  """(text, within noise?) of after[metric] against before[baseline or metric]; None
  when it did not change."""
  baseline = baseline or metric
  a, b = before[baseline], after[metric]
  if a == b:
    return None, False
  se_a, se_b = before[f"{baseline}_stderr"], after[f"{metric}_stderr"]
  se = float(np.hypot(se_a, se_b))
  noise = suite_lib.within_noise(a, se_a, b, se_b)
  size = "within noise" if noise else (f"{abs(b - a) / se:.1f} SE" if se else "no spread: every item moved")
  size += ", a loss" if b < a and not noise else ""
  return f"{label} {a:.2f} → {b:.2f} ({b - a:+.2f}, {size})", noise


STRATEGIES = (("few-shot k-NN", "few-shot random", "k-NN over random demonstrations"),
              ("CoT self-consistency", "CoT greedy", "self-consistency over greedy CoT"),
              ("calculator", "no tool", "the calculator over no tool"))


def _strategy_gains(rows: Dict[str, Dict[str, Any]]) -> str:
  """Each prompting strategy against its baseline on the same model, per stage."""
  lines = []
  for stage, values in rows.items():
    if "calculator" not in values:
      continue
    parts = []
    for metric, baseline, label in STRATEGIES:
      text, _ = _change(label, values, values, metric, baseline)
      parts.append(text or f"{label}: no difference ({values[metric]:.2f})")
    lines.append(f"- **{stage}**: " + "; ".join(parts))
  return "\n".join(lines)


def _gains(rows: Dict[str, Dict[str, Any]]) -> tuple:
  """(marks for the table, the markdown list of what each stage changed): every accuracy
  and the true reward against the stage before, 'within noise' under 2 standard errors of
  the difference."""
  marks, lines = {}, []
  names = list(rows)
  for before, after in zip(names, names[1:]):
    changes, same = [], []
    perplexity = (rows[before].get("perplexity"), rows[after].get("perplexity"))
    if None not in perplexity:
      changes.append(f"perplexity {perplexity[0]:.4g} → {perplexity[1]:.4g} ({perplexity[1] / perplexity[0]:.3g}x)")
    for metric in suite_lib.ACCURACIES + ("true reward",):
      if metric not in rows[before] or metric not in rows[after]:
        continue
      text, noise = _change(metric, rows[before], rows[after], metric)
      if text is None:
        same.append(metric)
        continue
      changes.append(text)
      if noise:
        marks[(after, metric)] = " (within noise)"
    lines.append(f"- **{after}** (vs {before}): " + "; ".join(changes) +
                 (f"; unchanged: {', '.join(same)}" if same else ""))
  return marks, "\n".join(lines)


def _timing_table(timings: List[tuple]) -> str:
  total = sum(t for _, t, _ in timings)
  lines = ["| stage | minutes | |", "| --- | ---: | --- |"]
  lines += [f"| {name} | {seconds / 60:.2f} | {note} |" for name, seconds, note in timings]
  lines.append(f"| total | {total / 60:.2f} | |")
  return "\n".join(lines) + ("\n\nMinutes are wall-clock on this machine, from the run that did the work "
                             "(cached stages: the earlier run's).")


@gin.configurable
def quickstart(model_dir: str = gin.REQUIRED,
               sources: Sequence[str] = ("embedded_prose", "embedded_code"),
               max_documents_per_source: Optional[int] = None,
               reasoning_documents: int = 2000,
               vocab_size: int = gin.REQUIRED,
               sequence_length: int = gin.REQUIRED,
               pretrain_steps: int = gin.REQUIRED,
               mixture_name: str = "quickstart_mix",
               sft_method: str = "full",
               alignment: str = "dpo",
               stages: Sequence[str] = ("sft", "align"),
               eval_documents: int = 32,
               eval_tokens_per_document: int = 512,
               validation_percent: int = 5,
               reasoning_problems: int = 25,
               prompts: Sequence[str] = DEFAULT_PROMPTS,
               max_new_tokens: int = 48,
               eval_batch_size: int = 32,
               seed: int = 0) -> Dict[str, Any]:
  """Runs the stages of the package docstring; returns {'stages': {stage: metrics},
  'held-out text': pretraining's perplexity, the untrained model's and their ratio}, or {}
  when a training stage was stopped (run again to resume).

  Pretraining is `train()` as gin binds it for pretrain_steps steps (runs/quickstart.gin:
  the model, the learning rate, the data: DataPipeline over `mixture_name`) in MODEL_DIR;
  `stages` picks the later ones ('sft': instruction_tuning with sft_method 'full' or
  'lora' in MODEL_DIR/sft (LoRA: MODEL_DIR/sft_lora); 'align': alignment with `alignment`
  'dpo', 'ppo' or 'grpo' in MODEL_DIR/<alignment> (after LoRA: MODEL_DIR/<alignment>_lora)),
  each configured by its own gin function (jaxlm.quickstart.stages); so full and LoRA
  chains share the pretraining of one MODEL_DIR.
  Every stage's model is measured by the same suite (jaxlm.quickstart.suite): perplexity
  on the first eval_documents validation documents cut to eval_tokens_per_document words,
  in rolling windows of sequence_length; reasoning_problems held-out problems per
  prompting strategy; the `prompts`' greedy continuations (max_new_tokens) as samples.
  validation_percent of the cleaned documents are held out."""
  started = time.time()
  for stage in stages:
    stages_lib.check_choice("quickstart.stages", stage, ("sft", "align"))
  settings = json.dumps([list(sources), max_documents_per_source, reasoning_documents, seed, validation_percent])
  data_dir = os.path.join(model_dir, "data", hashlib.sha1(settings.encode()).hexdigest()[:10])
  cached = os.path.isdir(data_dir)
  paths = prepare_corpus(data_dir, sources, max_documents_per_source, reasoning_documents, seed, validation_percent)
  vocabulary = prepare_vocabulary(data_dir, paths, vocab_size, seed, model_dir)
  register_quickstart_mixture(mixture_name, paths, vocabulary)
  timings = [("1-2. clean and tokenize", time.time() - started, "cached (this run's time)" if cached else "")]

  config = TransformerConfig()
  later = [s for s in stages if config.arch == "decoder"]
  if len(later) < len(stages):
    say(f"  instruction tuning, alignment and prompting need a causal decoder; TransformerConfig.arch="
        f"{config.arch!r}: pretraining only")
  say(f"[3/7] pretraining -> {model_dir} (TensorBoard: tensorboard --logdir {model_dir}/train)")
  pretraining = stages_lib.gin_settings("train", "warmup_cosine", "adamw", "DataPipeline",
                                        "register_quickstart_mixture")
  settings = dict(data=os.path.basename(data_dir), vocab_size=vocab_size, sequence_length=sequence_length,
                  **pretraining)
  trained = [stages_lib.run_stage("pretrained", model_dir, pretrain_steps, config, settings)]
  if trained[-1] is None:
    return _stopped(model_dir, "pretraining")
  if "sft" in later:
    sft_dir = os.path.join(model_dir, "sft" if sft_method == "full" else f"sft_{sft_method}")
    say(f"[4/7] instruction tuning ({sft_method}) -> {sft_dir}")
    trained.append(stages_lib.instruction_tuning(sft_dir, trained[-1], vocabulary, method=sft_method,
                                                 pretraining_task=f"{mixture_name}_corpus_as_targets"))
    if trained[-1] is None:
      return _stopped(sft_dir, "instruction tuning")
  if "align" in later:
    align_dir = os.path.join(model_dir, alignment if sft_method == "full" or "sft" not in later
                             else f"{alignment}_{sft_method}")
    say(f"[5/7] alignment ({alignment}) -> {align_dir}")
    trained.append(stages_lib.alignment(align_dir, trained[-1], vocabulary, method=alignment))
    if trained[-1] is None:
      return _stopped(align_dir, "alignment")
  timings += [(f"{i + 3}. {s.name} ({s.steps} steps)", s.train_seconds, "cached" if s.cached else "")
              for i, s in enumerate(trained)]

  say("[6/7] evaluating every stage with the same suite (prompting strategies on held-out problems)")
  untrained_model = stages_lib.model_for(config)
  untrained_params = untrained_model.init(jax.random.key(seed), untrained_model.dummy_batch(1, sequence_length))
  untrained = stages_lib.Stage("untrained", config, untrained_params,
                               identity=f"untrained:{seed}:{trained[0].identity}")
  texts = [r["text"] for r in sources_lib.read_jsonl_documents(paths["validation"])][:eval_documents]
  texts = [" ".join(t.split(" ")[:eval_tokens_per_document]) for t in texts]  # bounded eval cost
  preferences = stages_lib.preference_source()("validation") if later else []
  suite = suite_lib.SuiteSettings(sequence_length=sequence_length, batch_size=eval_batch_size,
                                  problems=reasoning_problems, sample_tokens=max_new_tokens, full=bool(later))
  sample_prompts = suite_lib.sample_prompts(prompts, preferences)
  suite_key = json.dumps([dataclasses.asdict(suite), sample_prompts, len(texts), eval_tokens_per_document,
                          os.path.basename(data_dir), len(preferences), stages_lib.gin_settings("preference_source")],
                         sort_keys=True, default=str)
  rows, samples = {}, {}
  for stage in [untrained] + trained:
    path = os.path.join(model_dir, "evals", stage.name.split(" ")[0] + ".json")
    try:
      metrics, outputs, seconds, cached = _cached_eval(
          path, f"{stage.identity}:{suite_key}",
          # Host copies: parameters straight from train() carry its sharding, restored and
          # fresh ones do not; as numpy every stage shares one set of compiled programs.
          lambda stage=stage: suite_lib.evaluate(stage.model, jax.device_get(stage.params), vocabulary, texts,
                                                 preferences, sample_prompts, suite))
    except KeyboardInterrupt:  # train() checkpoints on Ctrl-C; here the finished evaluations are saved
      say(f"\nstopped while evaluating the {stage.name} stage (the finished evaluations are saved in "
          f"{os.path.dirname(path)}); run the same command again to resume")
      return {}
    rows[stage.name], samples[stage.name] = metrics, outputs
    timings.append((f"evaluate {stage.name}", seconds, "cached" if cached else ""))
    say(f"  {stage.name}: " + ", ".join(f"{k}={v:.3g}" for k, v in metrics.items() if not k.endswith("_stderr")))

  say("[7/7] writing the report")
  marks, gains = _gains(rows)
  final = trained[-1]
  model = final.model
  path = report_lib.write_report(
      model_dir, rows, table="wide", marks=marks,
      loss_curve={s.name: loss_curve(s.model_dir) for s in trained},
      plot_groups={"held-out perplexity": ["perplexity"],
                   "instructions and preferences (0-1)": ["instruction EM", "preference acc", "true reward"],
                   "prompting strategies on held-out problems (accuracy)": list(suite_lib.ACCURACIES[2:]),
                   "calibration error (ECE, lower is better)": ["ECE"]},
      sections={"What each stage bought": gains + "\n\nA change under 2 standard errors of the difference is "
                "marked *within noise*: it is not a measured gain.",
                "Prompting strategies against their baselines (same model, same held-out problems)":
                    _strategy_gains(rows), "Time": _timing_table(timings)},
      samples=[{"prompt": p, **{name: out[i] for name, out in samples.items()}} for i, p in enumerate(sample_prompts)],
      title="jaxlm quickstart: pretrain, instruction-tune, align, prompt",
      config={"model": f"{config.arch}, {config.num_layers} layers, d_model {config.d_model}, "
                       f"{model.num_params(final.params):,} parameters",
              "stages": ", ".join(f"{s.name}: {s.steps} steps" for s in trained),
              "tokens seen in pretraining": f"{trained[0].tokens_seen:,}",
              "vocabulary": f"SentencePiece, {vocab_size} ids (chat role markers reserved)",
              "sources": ", ".join(sources), "mixture": mixture_name,
              "held-out sizes": f"{len(texts)} documents, {len(preferences)} instructions/preferences, "
                                f"{reasoning_problems} problems per prompting strategy"})
  say(f"  report: {path} ({(time.time() - started) / 60:.1f} minutes this run)")
  ratio = rows["pretrained"]["perplexity"] / rows["untrained"]["perplexity"]
  return {"stages": rows, "held-out text": {"perplexity": rows["pretrained"]["perplexity"], "ratio_to_untrained": ratio,
                                            "untrained_perplexity": rows["untrained"]["perplexity"]}}

