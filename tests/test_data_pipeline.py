"""SeqIO tasks and mixtures, feature conversion, per-host batches and a resumable position."""
import json

import numpy as np
import pytest

from jaxlm.data import cleaning, pii, tasks, vocab
from jaxlm.data.pipeline import DataPipeline

DECODER_FEATURES = {"decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights",
                    "decoder_segment_ids", "decoder_positions"}


@pytest.fixture(scope="module")
def small_vocab():
  v = vocab.seqio_vocabulary(vocab_size=1024, num_sentinels=128)
  tasks.register_embedded_tasks(vocabulary=v)
  return v


def pipe(name, lengths, converter="decoder", **kwargs):
  kwargs = {"batch_size": 4, "shard_index": 0, "num_shards": 1, **kwargs}
  return DataPipeline(name, lengths, feature_converter=converter, **kwargs)


def _write_jsonl(path, texts):
  path.write_text("".join(json.dumps({"text": t, "n": i}) + "\n" for i, t in enumerate(texts)))
  return str(path)


def _rows_text(v, batch):
  return [v.decode([int(t) for t in row if t > 1]) for row in batch["decoder_target_tokens"]]


# ------------------------------------------------------------------ registry
def test_registry_lists_every_task_and_mixture(small_vocab):
  names = set(tasks.list_tasks_and_mixtures())
  for source in ("prose", "code"):
    for objective in ("lm", "prefix_lm", "span_corruption", "ul2"):
      assert f"embedded_{source}_{objective}" in names
  assert {"embedded_mix", "embedded_mix_fixed", "embedded_mix_temperature", "embedded_mix_ul2"} <= names
  assert tasks.get_task_or_mixture("embedded_mix").name == "embedded_mix"
  with pytest.raises(ValueError, match="no task or mixture named 'embeded_mix'"):
    tasks.get_task_or_mixture("embeded_mix")


# ---------------------------------------------------------- feature converters
def test_decoder_batches_packed(small_vocab):
  batch = next(pipe("embedded_mix", {"targets": 64}))
  assert set(batch) == DECODER_FEATURES
  for value in batch.values():
    assert value.shape == (4, 64) and value.dtype == np.int32
  tgt, inp, seg, pos = (batch[k] for k in ("decoder_target_tokens", "decoder_input_tokens",
                                           "decoder_segment_ids", "decoder_positions"))
  assert (batch["decoder_loss_weights"] == (tgt != 0)).all()
  assert (seg.max(axis=1) >= 1).all() and ((tgt != 0) == (seg != 0)).all()
  for b in range(4):
    for t in range(64):
      if seg[b, t] == 0:
        continue
      first = t == 0 or seg[b, t - 1] != seg[b, t]
      assert inp[b, t] == (0 if first else tgt[b, t - 1])  # shifted right, 0 = BOS per segment
      assert pos[b, t] == (0 if first else pos[b, t - 1] + 1)


def test_prefix_decoder_causal_attention(small_vocab):
  batch = next(pipe("embedded_prose_prefix_lm", {"inputs": 32, "targets": 32}, "prefix_decoder", pack=False))
  assert set(batch) == DECODER_FEATURES | {"decoder_causal_attention"}
  for b in range(4):
    tokens, weights = batch["decoder_target_tokens"][b], batch["decoder_loss_weights"][b]
    prefix_len = int(np.argmax(tokens == 1)) + 1  # inputs end with the first EOS
    causal = batch["decoder_causal_attention"][b]
    assert causal[:prefix_len + 1].all() and not causal[prefix_len + 1:].any()  # + first target position
    assert not weights[:prefix_len].any() and weights[prefix_len:].sum() == (tokens[prefix_len:] != 0).sum()
    assert (batch["decoder_segment_ids"][b] == (tokens != 0)).all()


def test_encoder_decoder_span_corruption(small_vocab):
  batch = next(pipe("embedded_mix_span_corruption", {"inputs": 64, "targets": 16}, "encoder_decoder"))
  assert {"encoder_input_tokens", "encoder_segment_ids", "encoder_positions"} <= set(batch)
  assert batch["encoder_input_tokens"].shape == (4, 64) and batch["decoder_target_tokens"].shape == (4, 16)
  assert (batch["encoder_input_tokens"] >= 1024 - 128).any()  # sentinels in the inputs
  assert (batch["decoder_target_tokens"][:, 0] == 1023).all()  # every row starts with <extra_id_0>


def test_converter_must_match_task_features(small_vocab):
  # a causal decoder reads an inputs/targets task as one sequence, the loss on the targets
  batch = next(pipe("embedded_mix_ul2", {"inputs": 64, "targets": 64}, "decoder"))
  weights, prefix = batch["decoder_loss_weights"], batch["decoder_causal_attention"]
  segments = batch["decoder_segment_ids"].max(axis=1).sum()
  assert batch["decoder_target_tokens"].shape[1] == 128 and (weights * prefix).sum() <= segments
  assert weights.sum() > 0 and ((weights == 0) & (batch["decoder_target_tokens"] > 0)).sum() > 0
  with pytest.raises(ValueError, match="needs 'inputs' too"):
    pipe("embedded_mix", {"inputs": 64, "targets": 64}, "encoder_decoder")


# ------------------------------------------------------- determinism + state
def test_state_restore_gives_the_same_batches(small_vocab):
  first = pipe("embedded_mix", {"targets": 32}, seed=3)
  for _ in range(3):
    next(first)
  saved = json.loads(json.dumps(first.state()))
  expected = [next(first) for _ in range(2)]
  resumed = pipe("embedded_mix", {"targets": 32}, seed=3)
  resumed.restore(saved)
  for want in expected:
    got = next(resumed)
    assert all((got[k] == want[k]).all() for k in want)
  assert resumed.state()["step"] == 5
  other = pipe("embedded_mix", {"targets": 32}, seed=4)
  with pytest.raises(ValueError, match="seed: saved 3, now 4"):
    other.restore(saved)


def test_seed_decides_the_stream(small_vocab):
  a, b, c = (next(pipe("embedded_prose_lm", {"targets": 32}, seed=s, pack=False)) for s in (7, 7, 8))
  assert (a["decoder_target_tokens"] == b["decoder_target_tokens"]).all()
  assert not (a["decoder_target_tokens"] == c["decoder_target_tokens"]).all()


# ---------------------------------------------------------- files and hosts
def test_hosts_read_disjoint_shards(small_vocab, tmp_path):
  texts = [f"document {i} says hello" for i in range(40)]
  tasks.register_task("test_hosts_lm", _write_jsonl(tmp_path / "docs.jsonl", texts), "lm", small_vocab)
  seen = []
  for host in (0, 1):
    p = DataPipeline("test_hosts_lm", {"targets": 16}, batch_size=4, pack=False, shuffle=False, num_epochs=1,
                     shard_index=host, num_shards=2)
    assert p.per_host_batch_size == 2
    seen.append([t for batch in p for t in _rows_text(small_vocab, batch)])
  assert not set(seen[0]) & set(seen[1])
  assert set(seen[0]) | set(seen[1]) == set(texts)


def test_bad_jsonl_line_is_named(small_vocab, tmp_path):
  path = tmp_path / "broken.jsonl"
  path.write_text('{"text": "fine"}\n{"text": broken}\n')
  tasks.register_task("test_broken_lm", str(path), "lm", small_vocab)
  with pytest.raises(Exception, match=r"broken\.jsonl:2: invalid JSON"):
    list(DataPipeline("test_broken_lm", {"targets": 16}, batch_size=1, pack=False, num_epochs=1,
                      shard_index=0, num_shards=1))


def test_cleaning_stages_as_seqio_preprocessors(small_vocab, tmp_path):
  texts = ["The report says that the results were good. Write to ann@example.org for a copy of it.",
           "Die Ergebnisse sind gut, und der Bericht wird nach dem Treffen auch an die Presse gehen."]
  preprocessors = [cleaning.seqio_preprocessor(cleaning.LanguageFilter()),
                   cleaning.seqio_preprocessor(pii.PIIRedactor())]
  tasks.register_task("test_clean_lm", _write_jsonl(tmp_path / "mixed.jsonl", texts), "lm", small_vocab,
                      text_preprocessors=preprocessors)
  rows = [t for b in DataPipeline("test_clean_lm", {"targets": 64}, batch_size=1, pack=False, num_epochs=1,
                                  shuffle=False, shard_index=0, num_shards=1) for t in _rows_text(small_vocab, b)]
  assert rows == ["The report says that the results were good. Write to <EMAIL> for a copy of it."]
  from jaxlm.data import dedup

  with pytest.raises(ValueError, match="stateful"):
    cleaning.seqio_preprocessor(dedup.NearDedup())


# ------------------------------------------------------------------ mixtures
def test_mixture_rates(small_vocab, tmp_path):
  a = _write_jsonl(tmp_path / "a.jsonl", [f"alpha text {i}" for i in range(30)])
  b = _write_jsonl(tmp_path / "b.jsonl", [f"beta text {i}" for i in range(10)])
  tasks.register_task("test_alpha_lm", a, "lm", small_vocab)
  tasks.register_task("test_beta_lm", b, "lm", small_vocab)
  names = ["test_alpha_lm", "test_beta_lm"]

  def rates(mixture):
    return [mixture.get_rate(tasks.get_task_or_mixture(n)) for n in names]

  assert rates(tasks.register_mixture("test_prop", names, "proportional", cap=None)) == [30, 10]
  assert rates(tasks.register_mixture("test_cap", names, "proportional", cap=20)) == [20, 10]
  assert np.allclose(rates(tasks.register_mixture("test_temp", names, "temperature", cap=None, temperature=2.0)),
                     [30 ** 0.5, 10 ** 0.5])
  assert rates(tasks.register_mixture("test_fixed", names, "fixed", rates=[0.8, 0.2])) == [0.8, 0.2]
  rows = []
  p = DataPipeline("test_fixed", {"targets": 16}, batch_size=10, pack=False, seed=0, shard_index=0, num_shards=1)
  for _ in range(20):
    rows += _rows_text(small_vocab, next(p))
  share = np.mean([r.startswith("alpha") for r in rows])
  assert abs(share - 0.8) < 0.1  # 200 samples: 3 sigma ~ 0.085


def test_restore_after_a_peek_replays_without_rebuilding(small_vocab):
  p = pipe("embedded_prose_lm", {"targets": 32}, seed=5, pack=False)
  start = p.state()
  peeked = next(p)  # the trainer looks at one batch for shapes, then goes back
  iterator = p._iterator
  p.restore(start)
  again, after = next(p), next(p)
  assert p._iterator is iterator  # served from memory, same underlying stream
  assert (again["decoder_target_tokens"] == peeked["decoder_target_tokens"]).all()
  fresh = pipe("embedded_prose_lm", {"targets": 32}, seed=5, pack=False)
  next(fresh)
  assert (next(fresh)["decoder_target_tokens"] == after["decoder_target_tokens"]).all()


def test_restore_far_back_rebuilds(small_vocab):
  p = pipe("embedded_prose_lm", {"targets": 32}, seed=5, pack=False)
  batches = [next(p) for _ in range(5)]
  p.restore({**p.state(), "step": 1})  # further back than the replay buffer
  assert (next(p)["decoder_target_tokens"] == batches[1]["decoder_target_tokens"]).all()
  assert p.state()["step"] == 2


def test_data_gin_files_parse_and_bind():
  import glob
  import os

  import gin

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  files = sorted(glob.glob(os.path.join(root, "gin_configs", "data", "*.gin")))
  assert len(files) >= 4
  try:
    for path in files:
      gin.clear_config()
      gin.parse_config_file(path)
    gin.clear_config()
    gin.parse_config_file(os.path.join(root, "gin_configs", "data", "ul2.gin"))
    assert gin.query_parameter("DataPipeline.feature_converter") == "prefix_decoder"
    assert gin.query_parameter("MIXTURE_OR_TASK_NAME/macro.value") == "embedded_mix_ul2"
  finally:
    gin.clear_config()
