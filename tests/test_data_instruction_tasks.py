"""Instruction tasks and mixtures as SeqIO sees them (jaxlm.data.tasks), and their batches."""
from __future__ import annotations

import collections
import json

import numpy as np
import pytest

seqio = pytest.importorskip("seqio")

from jaxlm.data import instructions, tasks, vocab  # noqa: E402
from jaxlm.data.pipeline import DataPipeline  # noqa: E402

LENGTHS = {"inputs": 48, "targets": 16}


@pytest.fixture(scope="module")
def v():
  return vocab.seqio_vocabulary(vocab_size=1024, num_sentinels=128)


def _pairs(word, n):
  return [(f"{word} task, item {i}. Repeat the number.", str(i)) for i in range(n)]


def _register(name, word, n, v):
  return tasks.register_instruction_task(name, {"train": _pairs(word, n), "validation": _pairs(word, 4)}, v)


@pytest.mark.parametrize("converter", ["decoder", "prefix_decoder", "encoder_decoder"])
def test_batches_put_the_loss_on_the_outputs_only(v, converter):
  """Every weighted target token is an output token, and every output token is weighted;
  prompts are unweighted context (the same causal sequence, the bidirectional prefix, or
  the encoder)."""
  _register("t_layout", "alpha", 50, v)
  batch = next(iter(DataPipeline("t_layout", LENGTHS, batch_size=4, feature_converter=converter, pack=True,
                                 shuffle=False, shard_index=0, num_shards=1)))
  prompts = {f"alpha task, item {i}. Repeat the number.": str(i) for i in range(50)}
  targets, weights = batch["decoder_target_tokens"], batch["decoder_loss_weights"]
  segments = batch["decoder_segment_ids"]
  found = 0
  for row in range(targets.shape[0]):
    for seg in set(segments[row][segments[row] > 0].tolist()):
      here = segments[row] == seg
      output = v.decode([int(t) for t in targets[row][here & (weights[row] > 0)]])
      context = targets[row][here & (weights[row] == 0)]
      if converter == "encoder_decoder":
        enc = batch["encoder_input_tokens"][row][batch["encoder_segment_ids"][row] == seg]
        assert context.size == 0
        context = enc
      prompt = v.decode([int(t) for t in context])
      assert prompts[prompt] == output
      found += 1
      if converter == "prefix_decoder":  # bidirectional over the prompt (+ the first target slot)
        assert batch["decoder_causal_attention"][row][here].sum() == len(context) + 1
  assert found >= 8  # packing put several examples into the 4 rows


def test_generated_tasks_and_mixture_are_registered_with_held_out_families(v):
  names = tasks.register_generated_instruction_tasks(vocabulary=v, num_train=40, num_validation=8,
                                                     held_out_families=["coin_flip"])
  assert "instructions_mix" in names and "instructions_held_out" in names
  mix = seqio.get_mixture_or_task("instructions_mix")
  trained = {t.name for t in mix.tasks}
  assert "instructions_coin_flip" not in trained and len(trained) == len(names) - 3
  assert [t.name for t in seqio.get_mixture_or_task("instructions_held_out").tasks] == ["instructions_coin_flip"]
  ds = seqio.get_mixture_or_task("instructions_unit_conversion").get_dataset(LENGTHS, "validation", shuffle=False)
  ex = next(ds.as_numpy_iterator())
  assert ex["targets"][-1] == 1 and v.decode(ex["inputs"].tolist()) == ex["inputs_pretokenized"].decode()
  with pytest.raises(ValueError, match="unknown instruction families \\['nope'\\]"):
    tasks.register_generated_instruction_tasks(vocabulary=v, held_out_families=["nope"])


def test_capped_examples_proportional_mixture_samples_the_expected_rates(v):
  """Sizes 60 / 600 / 3000 with a cap of 1200: rates 60 : 600 : 1200. Over 2,000 sampled
  examples each share is within 0.035 of its rate (about 3.5 standard deviations of a
  binomial share at p = 1/3; 0.0104)."""
  for name, word, n in (("t_small", "alpha", 60), ("t_mid", "beta", 600), ("t_big", "gamma", 3000)):
    _register(name, word, n, v)
  mix = tasks.register_instruction_mixture("t_capped", ["t_small", "t_mid", "t_big"], cap=1200)
  ds = mix.get_dataset(LENGTHS, split="train", shuffle=True, seed=3)
  counts = collections.Counter(v.decode(ex["inputs"].tolist()).split()[0]
                               for ex in ds.take(2000).as_numpy_iterator())
  expected = {"alpha": 60 / 1860, "beta": 600 / 1860, "gamma": 1200 / 1860}
  shares = {k: counts[k] / 2000 for k in expected}
  assert sum(counts.values()) == 2000
  for key, rate in expected.items():
    assert abs(shares[key] - rate) < 0.035, (shares, expected)
  uncapped = {t.name: mix_rate for t, mix_rate in zip(
      mix.tasks, [tasks.register_instruction_mixture("t_uncapped", ["t_small", "t_mid", "t_big"], cap=None)
                  .get_rate(t) for t in mix.tasks])}
  assert uncapped["t_big"] == 3000.0  # the cap is what held it to 1200


def test_pretraining_text_is_mixed_in_at_the_set_share(v):
  _register("t_inst", "alpha", 200, v)
  tasks.register_task("t_pretrain_text", "embedded_prose", "lm_as_targets", v)
  mix = tasks.register_instruction_mixture("t_with_text", ["t_inst"], pretraining_task="t_pretrain_text",
                                           pretraining_rate=0.25)
  examples = list(mix.get_dataset(LENGTHS, split="train", shuffle=True, seed=0).take(800).as_numpy_iterator())
  text = [ex for ex in examples if ex["inputs"].size == 0]
  assert abs(len(text) / 800 - 0.25) < 0.05  # 3.3 standard deviations of the share
  assert np.mean([ex["targets"].size for ex in text]) > 10  # document pieces of up to 16 tokens
  batch = next(iter(DataPipeline("t_pretrain_text", LENGTHS, batch_size=2, pack=False, shuffle=False,
                                 shard_index=0, num_shards=1)))
  assert np.array_equal(batch["decoder_loss_weights"][0] > 0, batch["decoder_target_tokens"][0] > 0)
  with pytest.raises(ValueError, match="pretraining_rate=0.0"):
    tasks.register_instruction_mixture("t_bad", ["t_inst"], pretraining_task="t_pretrain_text")


def test_chat_turns_survive_tokenization_and_unknown_markers_are_rejected(v, tmp_path):
  chat = instructions.ChatTemplate()
  conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there!"},
                  {"role": "assistant", "content": "Hello. How can I help?"},
                  {"role": "user", "content": "Count: red sun"}, {"role": "assistant", "content": "2"}]
  text = chat.render(conversation)
  ids = v.encode(text)
  marker_ids = chat.check_vocabulary(v)
  assert sum(i in marker_ids.values() for i in ids) == 10  # each marker is one token
  assert chat.parse(v.decode(ids)) == conversation
  path = tmp_path / "chat.jsonl"
  path.write_text(json.dumps({"messages": conversation}) + "\n" + "oops\n")
  with pytest.raises(ValueError, match="chat.jsonl:2: invalid JSON"):
    tasks.register_instruction_file_task("t_chat", "chat", str(path), v)
  task = tasks.register_instruction_file_task("t_chat", "chat", str(path), v, errors="skip")
  rows = list(task.get_dataset(None, "train", shuffle=False).as_numpy_iterator())
  assert [r["targets"][-2:].tolist() for r in rows] == [[marker_ids["<|end|>"], 1]] * 2  # each turn ends it
  assert chat.parse(v.decode(rows[1]["inputs"].tolist() + rows[1]["targets"].tolist())) == conversation
  plain = vocab.load_vocabulary(vocab.train_sentencepiece(
      [text.replace("<|", "").replace("|>", "")] * 50, str(tmp_path / "plain.model"), vocab_size=350,
      num_sentinels=0, chat_symbols=()))
  with pytest.raises(ValueError, match="no single piece for the chat marker.*python -m jaxlm.data.vocab"):
    tasks.register_instruction_file_task("t_chat2", "chat", str(path), plain, errors="skip")
  mapped = instructions.ChatTemplate(markers={"system": "[S2S]", "user": "[NLU]", "assistant": "[NLG]"},
                                     end_of_turn="\t")
  assert set(mapped.check_vocabulary(plain)) == {"[S2S]", "[NLU]", "[NLG]", "\t"}


def test_alpaca_and_benchmark_files_become_tasks(v, tmp_path):
  alpaca = tmp_path / "alpaca.jsonl"
  alpaca.write_text("\n".join(json.dumps(r) for r in [
      {"instruction": "Add the numbers.", "input": "2 3", "output": "5"},
      {"instruction": "Say hi.", "output": "hi"}, {"instruction": "broken"}]) + "\n")
  task = tasks.register_instruction_file_task("t_alpaca", "alpaca", {"train": str(alpaca)}, v, errors="skip")
  rows = list(task.get_dataset(None, "train", shuffle=False).as_numpy_iterator())
  assert [r["targets_pretokenized"].decode() for r in rows] == ["5", "hi"]
  math = tmp_path / "gsm.jsonl"
  math.write_text(json.dumps({"question": "Ann has 2 pens and buys 3. How many?",
                              "answer": "2 + 3 = <<2+3=5>>5\n#### 5"}) + "\n")
  task = tasks.register_instruction_file_task("t_math", "math", {"validation": str(math)}, v)
  row = next(task.get_dataset(None, "validation", shuffle=False).as_numpy_iterator())
  assert instructions.answer_of(row["targets_pretokenized"].decode()) == "5"
  with pytest.raises(ValueError, match="kind='code'"):
    tasks.register_instruction_file_task("t_code", "code", str(math), v)


def test_an_over_long_prompt_loses_its_start_not_its_end(v):
  prompt = "A long instruction with many words before the question. " * 4 + "Question: two plus two?\n"
  tasks.register_instruction_task("t_long", {"train": [(prompt, "4")]}, v, splits=["train"])
  ex = next(seqio.get_mixture_or_task("t_long").get_dataset({"inputs": 8, "targets": 4}, "train",
                                                            shuffle=False).as_numpy_iterator())
  assert ex["inputs"].tolist() == v.encode(prompt)[-8:] and v.decode(ex["targets"].tolist()) == "4"
