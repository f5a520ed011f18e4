"""Parameter-efficient tuning learns: LoRA, prompt tuning and prefix tuning against full
fine-tuning and the frozen base, from the same instruction-tuned tiny model, on a family it
was not tuned on (word counting), measured zero-shot on held-out instances.

The base (train_helpers.tiny_instruction_model) is a 2-layer decoder pretrained on prose and
instruction-tuned on five other generated families, so it follows the instruction format
but cannot count words. Each method then trains for STEPS steps on count_words; only the
added parameters train for the PEFT methods (Trainable(added_only=True)), and the frozen
base parameters come out bit-identical.
"""
from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

pytest.importorskip("seqio")

from jaxlm.adaptation import SFTObjective  # noqa: E402
from jaxlm.data.pipeline import DataPipeline  # noqa: E402
from jaxlm.evaluation.evaluator import Evaluator  # noqa: E402
from jaxlm.inference.decoding import DecodeConfig  # noqa: E402
from jaxlm.training import Trainable, adamw, train, warmup_cosine  # noqa: E402
from jaxlm.training.checkpointing import restore_params  # noqa: E402

import train_helpers  # noqa: E402

STEPS = 150
# name: (config overrides, peak learning rate). PEFT rates are the ones that worked best in
# a sweep on this setup (LoRA at full fine-tuning's rate; the soft prompt ~3x higher).
METHODS = {
    "full": ({}, 3e-3),
    "lora": (dict(lora_rank=8, lora_alpha=16.0), 3e-3),
    "prompt": (dict(prompt_length=8), 1e-2),
    "prefix": (dict(prefix_length=8, prefix_hidden=64), 3e-3),
}
# Measured on a 2-core CPU (count_words exact match on 60 held-out instances, from
# train_helpers.tiny_instruction_model): at 150 steps each frozen 0.03, full 0.88, LoRA r=8
# 0.70, prompt 0.25, prefix 0.45; at 200 steps 0.03, 0.90, 0.83, 0.25, 0.55; at 300 steps
# 0.03, 0.83, 0.85, 0.27, 0.62 (LoRA closes the gap with more steps).
LORA_MARGIN = 0.25   # LoRA's exact match is at least full fine-tuning's minus this
PEFT_GAIN = 0.1      # prompt and prefix tuning beat the frozen base by at least this


def test_lora_nears_full_fine_tuning_and_soft_prompts_beat_the_frozen_base(tmp_path):
  base = train_helpers.tiny_instruction_model()
  v = train_helpers.instruction_vocabulary()
  task = train_helpers.register_family(v, "count_words")
  lengths = train_helpers.INSTRUCTION_LENGTHS
  base_params = restore_params(base)
  decoding = DecodeConfig(max_new_tokens=8)

  def exact_match(model, params):
    return Evaluator(model, [task], batch_size=60, decoding=decoding).evaluate(params)[task]["exact_match"]

  scores = {}
  for name, (overrides, peak) in METHODS.items():
    result = train(model_dir=str(tmp_path / name), train_steps=STEPS, batch_size=16,
                   config=train_helpers.tiny_instruction_config(**overrides),
                   data_fn=functools.partial(DataPipeline, task, lengths), optimizer=adamw,
                   learning_rate=warmup_cosine(peak_value=peak, warmup_steps=20, decay_steps=STEPS),
                   objective=SFTObjective(), init_from=base,
                   trainable=Trainable(added_only=True) if overrides else None, **train_helpers.QUIET_RUN)
    if overrides:  # the base is frozen: every loaded leaf is bit-identical after training
      tuned = train_helpers.flat_params(jax.device_get(result.state.params))
      for path, value in train_helpers.flat_params(base_params).items():
        np.testing.assert_array_equal(tuned[path], value, err_msg=f"{name}: {path} changed")
    else:  # the frozen base, scored by the same model
      scores["frozen"] = exact_match(result.model, base_params)
    scores[name] = exact_match(result.model, result.state.params)
  print(scores)
  assert scores["full"] >= scores["frozen"] + 0.5, scores
  assert scores["lora"] >= scores["full"] - LORA_MARGIN, scores
  assert scores["prompt"] >= scores["frozen"] + PEFT_GAIN, scores
  assert scores["prefix"] >= scores["frozen"] + PEFT_GAIN, scores

