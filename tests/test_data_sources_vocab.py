"""The embedded corpus, the file readers (JSONL, text, TFDS directories) and SentencePiece."""
import ast
import gzip
import json
import os
import subprocess
import sys
import time

import pytest

from jaxlm.data import sources, vocab
from jaxlm.evaluation import humaneval, suites
from jaxlm.inference.infer import read_prompts
from jaxlm.jsonl import FormatError, read_jsonl
from jaxlm.vocabularies import piece_id

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------ embedded corpus
def test_embedded_corpus_has_prose_and_code():
  prose, code = sources.embedded_documents("prose"), sources.embedded_documents("code")
  assert len(prose) > 1000 and len(code) > 300
  assert sum(len(d["text"]) for d in prose) > 1_000_000 and sum(len(d["text"]) for d in code) > 5_000_000
  assert any(d["id"].startswith("topic:") for d in prose) and any(d["id"].startswith("docstring:") for d in prose)
  assert all(d["id"].startswith("code:") for d in code)
  assert not any("/test/" in d["id"] or "idlelib" in d["id"] for d in code)
  for d in code[:50]:
    assert isinstance(sources.parse_python(d["text"]), ast.Module)  # real, parseable Python source
  assert len({d["id"] for d in prose}) == len(prose)


def test_embedded_splits_are_disjoint_and_stable():
  for name in sources.EMBEDDED_SOURCES:
    train = {d["id"] for d in sources.embedded_documents(name, "train")}
    valid = {d["id"] for d in sources.embedded_documents(name, "validation")}
    assert valid and not train & valid
    assert len(train) + len(valid) == len(sources.embedded_documents(name))
    assert all(sources.split_of(i) == "validation" for i in valid)
  with pytest.raises(ValueError, match="unknown split"):
    sources.embedded_documents("prose", "test")


# ------------------------------------------------------------------- readers
def test_read_jsonl_documents_and_errors_name_file_and_line(tmp_path):
  good = tmp_path / "good.jsonl"
  good.write_text('{"text": "one", "id": 1}\n\n{"text": "two"}\n')
  assert [r["text"] for r in sources.read_jsonl_documents(str(good))] == ["one", "two"]
  bad_json = tmp_path / "bad.jsonl"
  bad_json.write_text('{"text": "ok"}\n{"text": oops}\n')
  with pytest.raises(FormatError, match=r"bad\.jsonl:2: invalid JSON"):
    list(sources.read_jsonl_documents(str(bad_json)))
  missing = tmp_path / "missing.jsonl"
  missing.write_text('{"text": "ok"}\n{"body": "x"}\n')
  with pytest.raises(FormatError, match=r"missing\.jsonl:2: no string field 'text'"):
    list(sources.read_jsonl_documents(str(missing)))
  binary = tmp_path / "binary.jsonl"
  binary.write_bytes(b'{"text": "ok"}\n{"text": "ok"}\n{"text": "\xff"}\n')
  with pytest.raises(FormatError, match=r"binary\.jsonl:3: invalid UTF-8"):
    list(sources.read_jsonl_documents(str(binary)))
  with pytest.raises(FileNotFoundError, match="no file matches"):
    list(sources.read_jsonl_documents(str(tmp_path / "nope-*.jsonl")))


def test_one_jsonl_reader_for_data_evaluation_and_inference(tmp_path):
  path = tmp_path / "rows.jsonl.gz"
  with gzip.open(path, "wt", encoding="utf-8") as handle:
    handle.write('{"prompt": "a"}\n\n[1, 2]\n{"prompt": "b"}\n')
  with pytest.raises(FormatError, match=r"rows\.jsonl\.gz:3: expected one JSON object per line, got list"):
    list(read_jsonl(str(path)))
  rows = list(read_jsonl(str(path), errors="yield"))
  assert [n for n, _ in rows] == [1, 3, 4] and isinstance(rows[1][1], FormatError) and rows[1][1].line == 3
  with pytest.raises(ValueError, match="errors='skip'"):
    list(read_jsonl(str(path), errors="skip"))
  prompts = tmp_path / "prompts.jsonl"
  prompts.write_text('{"prompt": "Q: 1 + 1?"}\n{"inputs": "translate"}\n')
  assert read_prompts(str(prompts)) == ["Q: 1 + 1?", "translate"]
  prompts.write_text('{"prompt": "ok"}\n{"prompt": "ok"\n')
  with pytest.raises(FormatError, match=r"prompts\.jsonl:2: invalid JSON"):
    read_prompts(str(prompts))
  prompts.write_text('{"prompt": "ok"}\n{"question": "where?"}\n')
  with pytest.raises(FormatError, match=r"prompts\.jsonl:2: no string 'prompt'"):
    read_prompts(str(prompts))
  assert suites.read_jsonl is read_jsonl and humaneval.FormatError is FormatError


def test_read_text_files_units(tmp_path):
  (tmp_path / "a.txt").write_text("First paragraph\nstill first.\n\nSecond one.\n")
  (tmp_path / "b.txt").write_text("Only line\n")
  pattern = str(tmp_path / "*.txt")
  assert [d["text"] for d in sources.read_text_files(pattern, "file")] == [
      "First paragraph\nstill first.\n\nSecond one.\n", "Only line\n"]
  paragraphs = list(sources.read_text_files(pattern, "paragraph"))
  assert [d["text"] for d in paragraphs] == ["First paragraph\nstill first.", "Second one.", "Only line"]
  assert paragraphs[1]["id"].endswith("a.txt:4")
  assert len(list(sources.read_text_files(pattern, "line"))) == 4
  (tmp_path / "c.txt").write_bytes(b"fine\nfine\nbroken \xc3\x28 here\n")
  with pytest.raises(FormatError, match=r"c\.txt:3: invalid UTF-8"):
    list(sources.read_text_files(str(tmp_path / "c.txt")))


def _make_tfds_dir(root):
  """A TFDS dataset prepared on disk, as a researcher would bring it (no download)."""
  import tensorflow as tf
  import tensorflow_datasets as tfds

  def texts(numbers):
    return tf.data.Dataset.from_tensor_slices({"text": [f"document number {i}" for i in numbers]})

  builder = tfds.dataset_builders.store_as_tfds_dataset(
      name="tiny_jaxlm_corpus", version="1.0.0", data_dir=str(root),
      features=tfds.features.FeaturesDict({"text": tfds.features.Text()}),
      split_datasets={"train": texts(range(6)), "validation": texts((100, 101))})
  return builder.data_dir


def test_tfds_directory_reader(tmp_path):
  data_dir = _make_tfds_dir(tmp_path)
  texts = sorted(d["text"] for d in sources.read_tfds_directory(data_dir, "train"))
  assert texts == sorted(f"document number {i}" for i in range(6))
  assert len(list(sources.iter_documents(f"tfds:{data_dir}:validation"))) == 2
  source = sources.tfds_directory_source(data_dir)
  assert source.count_documents("train") == 6
  got = sorted(ex["text"].decode() for ex in source.get_dataset("validation", shuffle=False).as_numpy_iterator())
  assert got == ["document number 100", "document number 101"]


def test_iter_documents_specs(tmp_path):
  (tmp_path / "x.jsonl").write_text('{"text": "from jsonl"}\n')
  (tmp_path / "y.txt").write_text("from text")
  docs = list(sources.iter_documents(f"{tmp_path}/x.jsonl,{tmp_path}/y.txt"))
  assert [d["text"] for d in docs] == ["from jsonl", "from text"]
  assert len(list(sources.iter_documents("embedded_code", split="validation"))) == len(
      sources.embedded_documents("code", "validation"))


# --------------------------------------------------------------- tokenizers
SAMPLE = "def add(a, b):\n    return a + b  # Zürich 3.14\n\tdone"


@pytest.fixture(scope="module")
def small_vocab():
  return vocab.seqio_vocabulary(vocab_size=1024, num_sentinels=128)


def test_vocab_layout_and_sentinels(small_vocab):
  v = small_vocab
  assert v.vocab_size == 1024 and v.extra_ids == 128
  sp = v.tokenizer
  assert (sp.pad_id(), sp.eos_id(), sp.unk_id(), sp.bos_id()) == (0, 1, 2, -1)
  assert v.encode("a <extra_id_0>")[-1] == 1023 and v.encode("a <extra_id_127>")[-1] == 1024 - 128
  assert v.decode(v.encode("no space\nbefore")) == "no space\nbefore"  # no dummy prefix
  assert v.encode("Q: 2 + 2?\n") + v.encode("4 apples") == v.encode("Q: 2 + 2?\n4 apples")
  for token in vocab.UL2_MODE_TOKENS:
    assert piece_id(v, token) is not None and piece_id(v, token) < 10
  assert piece_id(v, "not-a-piece-at-all") is None


def test_vocab_round_trips_code_and_bytes(small_vocab):
  v = small_vocab
  for text in (SAMPLE, "emoji 🦜 and CJK 鸚鵡"):
    ids = v.encode(text)
    assert 2 not in ids  # byte fallback: nothing is UNK
    assert v.decode(ids) == text
  import tensorflow as tf

  assert v.encode_tf(tf.constant(SAMPLE)).numpy().tolist() == v.encode(SAMPLE)


def test_seqio_vocabulary_is_cached(small_vocab):
  start = time.time()
  again = vocab.seqio_vocabulary(vocab_size=1024, num_sentinels=128)
  assert again.sentencepiece_model_file == small_vocab.sentencepiece_model_file
  assert time.time() - start < 1.0  # loaded, not retrained


def test_train_unigram_and_normalization_options(tmp_path):
  texts = [d["text"] for d in sources.embedded_documents("prose", "train")[:300]]
  common = dict(vocab_size=600, num_sentinels=100, max_lines=6000)
  uni = vocab.load_vocabulary(vocab.train_sentencepiece(texts, str(tmp_path / "u.model"), model_type="unigram",
                                                        normalization="identity", **common))
  nfkc = vocab.load_vocabulary(vocab.train_sentencepiece(texts, str(tmp_path / "n.model"), model_type="bpe",
                                                         normalization="nmt_nfkc", **common))
  assert uni.vocab_size == nfkc.vocab_size == 600 and uni.extra_ids == 100
  ligature = "ﬁnal ①"  # NFKC folds the ligature and the circled digit
  assert uni.decode(uni.encode(ligature)) == ligature
  assert nfkc.decode(nfkc.encode(ligature)) == "final 1"
  meta = json.loads((tmp_path / "u.model.json").read_text())
  assert meta["model_type"] == "unigram" and meta["num_sentinels"] == 100
  with pytest.raises(ValueError, match="no room"):
    vocab.train_sentencepiece(texts, str(tmp_path / "x.model"), vocab_size=300, num_sentinels=100)


def test_vocab_command_line(tmp_path):
  corpus = tmp_path / "corpus.jsonl"
  with open(corpus, "w") as handle:
    for d in sources.embedded_documents("prose", "train")[:200]:
      handle.write(json.dumps({"text": d["text"]}) + "\n")
  out = tmp_path / "cli.model"
  proc = subprocess.run([sys.executable, "-m", "jaxlm.data.vocab", "--source", str(corpus), "--vocab_size", "700",
                         "--num_sentinels", "100", "--output", str(out)],
                        capture_output=True, text=True, check=True, cwd=REPO)
  info = json.loads(proc.stdout.strip().splitlines()[-1])
  assert info["vocab_size_with_sentinels"] == 700 and out.exists()
  assert "tensorflow" not in proc.stderr.lower()  # the CLI does not import TensorFlow
