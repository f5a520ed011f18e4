"""Preference data (jaxlm/data/preferences.py): the JSONL readers and their errors, generated
preferences and their true rewards, and the batches: layout, grouping, state."""
from __future__ import annotations

import json

import numpy as np
import pytest

from jaxlm.data import generated_tasks, preferences as prefs
from jaxlm.data.instructions import ChatTemplate
from jaxlm.jsonl import FormatError
from jaxlm.vocabularies import ByteVocab

LENGTHS = {"inputs": 24, "targets": 8}


def _write(path, rows):
  with open(path, "w", encoding="utf-8") as f:
    for row in rows:
      f.write(row if isinstance(row, str) else json.dumps(row))
      f.write("\n")
  return str(path)


def test_pairwise_ranked_and_chat_lines_are_read(tmp_path):
  chat = ChatTemplate()
  path = _write(tmp_path / "p.jsonl", [
      {"prompt": "2 + 2 =", "chosen": "4", "rejected": "5"},
      {"prompt": "Name a color.", "responses": ["red", "a color", "no"]},
      {"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "Hello!"}],
       "rejected": "Go away."}])
  data, stats = prefs.read_preferences(path)
  assert stats.read == stats.kept == 3
  assert data[0] == prefs.Preference("2 + 2 =", ("4", "5"))
  assert data[1].responses == ("red", "a color", "no")
  assert data[2].prompt == chat.render([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
  assert data[2].responses == ("Hello!" + chat.end_of_turn, "Go away." + chat.end_of_turn)


@pytest.mark.parametrize("line,why", [
    ('{"prompt": "x", "chosen": "a"}', "expected 'chosen' and 'rejected'"),
    ('{"chosen": "a", "rejected": "b"}', "missing field 'prompt'"),
    ('{"prompt": "x", "chosen": "a", "rejected": "a"}', "the same text"),
    ('{"prompt": "x", "responses": ["a"]}', "at least 2"),
    ('{"prompt": "x", "chosen": 3, "rejected": "b"}', "chosen. must be a non-empty string"),
    ('{"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], '
     '"chosen": "a", "rejected": "b"}', "before the assistant"),
    ('{"prompt": "x", "chosen": "a", "rejected": "b"', "invalid JSON")])
def test_malformed_lines_are_named_by_file_and_line(tmp_path, line, why):
  path = _write(tmp_path / "bad.jsonl", [{"prompt": "ok", "chosen": "a", "rejected": "b"}, line])
  with pytest.raises(FormatError, match=f"bad.jsonl:2: .*{why}"):
    prefs.read_preferences(path)
  data, stats = prefs.read_preferences(path, errors="skip")
  assert len(data) == 1 and len(stats.skipped) == 1 and ":2:" in stats.skipped[0]


@pytest.mark.parametrize("rule,k", [("correctness", 4), ("format", 3), ("format", 2), ("length", 4)])
def test_generated_rankings_have_strictly_decreasing_true_rewards(rule, k):
  for family in ("multi_step_arithmetic", "reverse_words", "last_letters", "word_problems"):
    for split in ("train", "validation"):
      for p in prefs.generated_preferences(family, rule, 30, split, num_responses=k):
        rewards = [p.true_reward(r) for r in p.responses]
        assert all(a > b for a, b in zip(rewards, rewards[1:])), (p, rewards)
        assert generated_tasks.split_of(family, p.truth["example"]) == split
  with pytest.raises(ValueError, match="rule 'format' makes 2..3"):
    prefs.generated_preferences("reverse_words", "format", 2, num_responses=4)


def test_true_rewards_score_any_response():
  ex = {"output": "14", "rationale": "3 + 4 = 7. 7 * 2 = 14."}
  assert prefs.true_reward("correctness", "multi_step_arithmetic", ex, "The answer is 11.") == -3.0
  assert prefs.true_reward("correctness", "multi_step_arithmetic", ex, "no idea") == -prefs.MAX_DISTANCE
  assert prefs.true_reward("correctness", "reverse_words", {"output": "c b a"}, "c x a") == -1.0
  assert prefs.true_reward("format", "x", ex, "The answer is 14.<|end|>") == 1.0
  assert prefs.true_reward("format", "x", ex, "The answer is 14. Because.") == 0.5
  assert prefs.true_reward("length", "x", ex, "fourteen it is") == -3.0


def test_rows_match_the_instruction_pipeline_layout():
  """A (prompt, response) row is the unpacked SeqIO PrefixLM row of the same
  (prompt, target) instruction pair, so DPO scores exactly what SFT trained on."""
  pytest.importorskip("seqio")
  from jaxlm.data import tasks, vocab
  from jaxlm.data.pipeline import DataPipeline
  v = vocab.seqio_vocabulary(vocab_size=1024, num_sentinels=128)
  prompt, response = "Sort the words in alphabetical order.\n\nowl cat\n", "cat owl"
  tasks.register_instruction_task("t_pref_layout", {"train": [(prompt, response)], "validation": [(prompt, response)]}, v)
  want = next(iter(DataPipeline("t_pref_layout", LENGTHS, batch_size=1, pack=False, shuffle=False,
                                shard_index=0, num_shards=1)))
  got = prefs.encode_pair(v, prompt, response, LENGTHS)
  for key, value in want.items():
    np.testing.assert_array_equal(got[key], value[0], err_msg=key)


def test_batches_group_rank_shard_and_resume():
  data = [prefs.Preference(f"q{i}", ("a", "bb", "ccc")[:2 + i % 2]) for i in range(5)]
  pipe = prefs.PreferenceData({"train": data}, LENGTHS, batch_size=6, vocabulary=ByteVocab(), seed=3)
  assert pipe.k == 3 and pipe.batches_per_epoch == 3
  batch = next(pipe)
  assert batch["decoder_target_tokens"].shape == (6, 32)
  np.testing.assert_array_equal(batch["response_group"] > 0, batch["decoder_loss_weights"].sum(1) > 0)
  present = batch["response_group"][:3] > 0  # the first prompt's rows, best first
  assert set(batch["response_group"][:3][present]) == {1}
  np.testing.assert_array_equal(batch["response_rank"][:3][present], np.arange(present.sum()))
  saved, expected = pipe.state(), [next(pipe) for _ in range(4)]
  again = prefs.PreferenceData({"train": data}, LENGTHS, batch_size=6, vocabulary=ByteVocab(), seed=3)
  again.restore(saved)
  for a, b in zip(expected, [next(again) for _ in range(4)]):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  held = pipe.epoch()  # the last batch is padded with an empty prompt
  assert len(held) == 3 and (held[-1]["response_group"][3:] == 0).all()
  halves = [prefs.PreferenceData({"train": data}, LENGTHS, batch_size=6, vocabulary=ByteVocab(), shuffle=False,
                                 shard_index=i, num_shards=2) for i in (0, 1)]
  rows = [next(h)["decoder_target_tokens"] for h in halves]
  np.testing.assert_array_equal(np.concatenate(rows), held[0]["decoder_target_tokens"])
  with pytest.raises(ValueError, match="not a multiple of the 3 responses"):
    prefs.PreferenceData({"train": data}, LENGTHS, batch_size=4, vocabulary=ByteVocab())
  with pytest.raises(ValueError, match="different settings: seed"):
    prefs.PreferenceData({"train": data}, LENGTHS, batch_size=6, vocabulary=ByteVocab(), seed=4).restore(saved)
