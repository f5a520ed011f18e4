"""Instruction tuning learns: SFT from a pretrained tiny model, measured zero-shot on
held-out instances, with the pretrained model measured the same way.

One run serves every assertion (it is the suite's one SFT learning run): a 2-layer causal
decoder pretrained for 80 steps on the embedded prose (the pretraining stage of
train_helpers.tiny_instruction_model, shared with the other learning tests), then
instruction-tuned with SFTObjective via train.init_from on three generated tasks: unit
conversion and word counting as plain instances, and word counting again as chat turns.
"""
from __future__ import annotations

import functools

import numpy as np
import pytest

pytest.importorskip("seqio")

from jaxlm.adaptation import SFTObjective  # noqa: E402
from jaxlm.data import generated_tasks, instructions, tasks  # noqa: E402
from jaxlm.data.pipeline import DataPipeline  # noqa: E402
from jaxlm.evaluation.evaluator import Evaluator, iterate_batches  # noqa: E402
from jaxlm.inference.decoding import DecodeConfig, predict_batch  # noqa: E402
from jaxlm.training import adamw, train, warmup_cosine  # noqa: E402
from jaxlm.training.checkpointing import restore_params  # noqa: E402

import train_helpers  # noqa: E402
from train_helpers import use_compilation_cache  # noqa: E402

CONFIG = train_helpers.tiny_instruction_config()
SFT_STEPS = 400
NUM_VALIDATION = 60
LENGTHS = {"inputs": 64, "targets": 16}
RUN = dict(progress_bar=False, tensorboard=False, log_every=50, checkpoint_every=10_000, async_checkpoints=False)
MIN_GAIN = 0.5  # exact match (0-1) the SFT model must gain over the pretrained one, per task
# (measured at 400 steps: unit_conversion 0.82, count_words 0.97, count_words as chat 0.92,
# each from 0.00; every chat answer stops at <|end|>)


def _register(v, family, chat=None, name=None):
  templates = generated_tasks.FAMILIES[family].templates[:1]  # the direct, zero-shot wording
  sizes = {"train": 1000, "validation": NUM_VALIDATION}

  def pairs(split):
    return instructions.template_pairs(generated_tasks.examples(family, sizes[split], split), templates,
                                       family, chat=chat)
  return tasks.register_instruction_task(name or f"sft_{family}", pairs, v, chat=chat).name


def _stops_at_end_of_turn(model, params, task_name, end_id):
  """Share of held-out chat prompts whose generated assistant turn emits <|end|>."""
  from jaxlm.evaluation.evaluator import feature_converter_for
  import seqio
  task = seqio.get_mixture_or_task(task_name)
  ds = task.get_dataset(LENGTHS, "validation", shuffle=False)
  ds = feature_converter_for(model, task_name)(ds, LENGTHS).enumerate()
  stopped = []
  for _, batch, n in iterate_batches(ds, NUM_VALIDATION):
    tokens = np.asarray(predict_batch(model, params, batch, DecodeConfig(max_new_tokens=8, eos_id=None)))[:n]
    stopped += [end_id in row.tolist() for row in tokens]
  return float(np.mean(stopped))


def test_sft_from_a_pretrained_model_raises_zero_shot_exact_match_on_held_out_instances(tmp_path):
  use_compilation_cache()
  v = train_helpers.instruction_vocabulary()
  pretrained = train_helpers.tiny_pretrained_model()  # 80 steps on the embedded prose, shared

  chat = instructions.ChatTemplate()
  plain = [_register(v, "unit_conversion"), _register(v, "count_words")]
  chatted = _register(v, "count_words", chat, name="sft_count_words_chat")
  tasks.register_mixture("sft_mix", plain + [chatted], "fixed")
  sft = train(model_dir=str(tmp_path / "sft"), train_steps=SFT_STEPS, batch_size=16, config=CONFIG,
              data_fn=functools.partial(DataPipeline, "sft_mix", LENGTHS),
              optimizer=adamw, learning_rate=warmup_cosine(peak_value=3e-3, warmup_steps=20, decay_steps=SFT_STEPS),
              objective=SFTObjective(), init_from=pretrained, **RUN)
  assert sft.history[0]["loss"] > 3.0 > 1.0 > sft.history[-1]["loss"]

  model = sft.model
  end_id = chat.end_of_turn_id(v)
  scores = {}
  for label, params in (("pretrained", restore_params(pretrained)), ("sft", sft.state.params)):
    plain_scores = Evaluator(model, plain, batch_size=NUM_VALIDATION,
                             decoding=DecodeConfig(max_new_tokens=8)).evaluate(params)
    chat_scores = Evaluator(model, [chatted], batch_size=NUM_VALIDATION,
                            decoding=DecodeConfig(max_new_tokens=8, eos_id=end_id)).evaluate(params)
    scores[label] = {k: m["exact_match"] for k, m in {**plain_scores, **chat_scores}.items()}
    scores[label]["stops"] = _stops_at_end_of_turn(model, params, chatted, end_id)
  print(scores)
  for name in plain + [chatted]:
    assert scores["sft"][name] - scores["pretrained"][name] >= MIN_GAIN, scores
  assert scores["sft"]["stops"] >= 0.9 > scores["pretrained"]["stops"], scores
