"""jaxlm inside lm-evaluation-harness: the `jaxlm` model against lm-eval's own Hugging Face
model (HFLM) on random-weight GPT-2 and LLaMA directories with a tokenizer trained here,
request by request and through local task files; batch-size invariance; the command line.
Offline: the tasks read JSONL files written here through lm-eval's task YAML."""
import json
import os
import subprocess
import sys

os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

import lm_eval  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from train_helpers import ROOT  # noqa: E402
from jaxlm.evaluation.lm_eval import JaxlmLM  # noqa: E402

TEXTS = ["the quick brown fox jumps over the lazy dog", "a cat sat on the mat and looked at the dog",
         "one two three four five six seven eight nine ten", "Question: what is two plus two? Answer: four",
         "the sky is blue and the grass is green"]
MAX_LEN = 48  # the models' positions: long requests are truncated, long documents take several windows
LOGLIK = [("the quick brown", " fox"), ("", "the sky"), ("a cat sat on the ", "mat"),
          (" ".join(TEXTS), " dog"), ("one two", " three four five"), ("Question: what is", " two plus two?")]
DOCS = [" ".join(TEXTS), "the cat", " ".join(TEXTS[::-1]) * 2]
GREEDY = {"until": ["dog"], "max_gen_toks": 8, "do_sample": False}
PROMPTS = ["the quick", "one two three", "a", "Question: what is two plus two?\nAnswer:"]
MC = [{"question": "2 + 2 =", "choices": ["3", "4", "5"], "answer": 1},
      {"question": "The sky is", "choices": ["blue", "green"], "answer": 0},
      {"question": "the quick brown", "choices": ["fox", "dog", "cat", "mat"], "answer": 0},
      {"question": "one two three", "choices": ["four", "ten"], "answer": 0},
      {"question": "a cat sat on the", "choices": ["mat", "sky"], "answer": 0}]


def train_tokenizer(path):
  """A byte-level BPE tokenizer (GPT-2's kind) trained on TEXTS, with BOS <s> and EOS </s>."""
  import tokenizers
  tok = tokenizers.ByteLevelBPETokenizer()
  tok.train_from_iterator(TEXTS * 5, vocab_size=300, min_frequency=1, special_tokens=["<s>", "</s>"],
                          show_progress=False)
  fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok._tokenizer, bos_token="<s>", eos_token="</s>")
  fast.save_pretrained(path)
  return fast


def hf_directory(path, arch: str) -> str:
  """A random-weight GPT-2 or LLaMA (peaked: init std 0.2) saved beside its tokenizer."""
  tok = train_tokenizer(path)
  torch.manual_seed(0)
  ids = dict(vocab_size=len(tok), initializer_range=0.2, bos_token_id=tok.bos_token_id,
             eos_token_id=tok.eos_token_id)
  if arch == "gpt2":
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_positions=MAX_LEN, n_embd=32, n_layer=2,
                                                                 n_head=4, **ids))
  else:
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=MAX_LEN, **ids))
  model.eval().save_pretrained(path)
  return str(path)


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
  return hf_directory(tmp_path_factory.mktemp("gpt2"), "gpt2")


def instances(kind, args):
  return [Instance(kind, {}, a if isinstance(a, tuple) else (a,), i) for i, a in enumerate(args)]


def write_tasks(root) -> str:
  """lm-eval task YAML over local JSONL files: multiple choice and a document task."""
  root.mkdir(exist_ok=True)
  (root / "mc.jsonl").write_text("".join(json.dumps(ex) + "\n" for ex in MC))
  (root / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in DOCS))
  common = "dataset_path: json\ntest_split: test\n"
  (root / "toy_mc.yaml").write_text(
      f"task: toy_mc\n{common}dataset_kwargs:\n  data_files:\n    test: {root / 'mc.jsonl'}\n"
      "output_type: multiple_choice\ndoc_to_text: \"{{question}}\"\ndoc_to_choice: \"{{choices}}\"\n"
      "doc_to_target: answer\nmetric_list:\n  - metric: acc\n")
  (root / "toy_docs.yaml").write_text(
      f"task: toy_docs\n{common}dataset_kwargs:\n  data_files:\n    test: {root / 'docs.jsonl'}\n"
      "output_type: loglikelihood_rolling\ndoc_to_text: \"\"\ndoc_to_target: \"{{text}}\"\n"
      "metric_list:\n  - metric: word_perplexity\n  - metric: bits_per_byte\n")
  return str(root)


def run_tasks(lm, include_path, tasks=("toy_mc", "toy_docs")):
  manager = TaskManager(include_path=include_path, include_defaults=False)
  return lm_eval.simple_evaluate(model=lm, tasks=list(tasks), task_manager=manager)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_jaxlm_matches_lm_evals_hf_model(arch, gpt2_dir, tmp_path):
  """Per-request log-likelihoods to 1e-4 with the same is_greedy, rolling document
  log-likelihoods, greedy generations, and the task scores of local task files."""
  path = gpt2_dir if arch == "gpt2" else hf_directory(tmp_path / arch, arch)
  ref = HFLM(pretrained=path, device="cpu", dtype="float32", batch_size=3)
  ours = JaxlmLM(hf_dir=path, batch_size=3)
  assert ours.max_length == ref.max_length == MAX_LEN and ours.prefix_token_id == ref.prefix_token_id
  # A continuation the model would pick greedily: is_greedy must say so.
  first = ref.generate_until(instances("generate_until", [(PROMPTS[0], {"until": [], "max_gen_toks": 1})]))[0]
  requests = LOGLIK + [(PROMPTS[0], first)]
  want = ref.loglikelihood(instances("loglikelihood", requests))
  got = ours.loglikelihood(instances("loglikelihood", requests))
  np.testing.assert_allclose([g for g, _ in got], [w for w, _ in want], atol=1e-4, rtol=0)
  assert [g for _, g in got] == [w for _, w in want] and got[-1][1] and not all(g for _, g in got)

  want = ref.loglikelihood_rolling(instances("loglikelihood_rolling", DOCS))
  got = ours.loglikelihood_rolling(instances("loglikelihood_rolling", DOCS))
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-6)  # sums of up to ~170 tokens

  gens = instances("generate_until", [(p, GREEDY) for p in PROMPTS])
  want = ref.generate_until(gens)
  assert ours.generate_until(gens) == want and len(set(want)) == len(want)

  include = write_tasks(tmp_path / "tasks")
  want, got = run_tasks(ref, include), run_tasks(ours, include)
  assert got["results"]["toy_mc"]["acc,none"] == want["results"]["toy_mc"]["acc,none"]
  for metric in ("word_perplexity,none", "bits_per_byte,none"):
    assert got["results"]["toy_docs"][metric] == pytest.approx(want["results"]["toy_docs"][metric], rel=1e-6)


def test_results_do_not_depend_on_the_batch_size(gpt2_dir):
  """The same requests at batch sizes 1, 3 and 8: equal per-request values (1e-5)."""
  results = []
  for batch_size in (1, 3, 8):
    lm = JaxlmLM(hf_dir=gpt2_dir, batch_size=batch_size)
    results.append((lm.loglikelihood(instances("loglikelihood", LOGLIK)),
                    lm.loglikelihood_rolling(instances("loglikelihood_rolling", DOCS)),
                    lm.generate_until(instances("generate_until", [(p, GREEDY) for p in PROMPTS]))))
  (ll, rolling, gens), rest = results[0], results[1:]
  for other_ll, other_rolling, other_gens in rest:
    np.testing.assert_allclose([x for x, _ in other_ll], [x for x, _ in ll], atol=1e-5, rtol=0)
    assert [g for _, g in other_ll] == [g for _, g in ll]
    np.testing.assert_allclose(other_rolling, rolling, atol=1e-5, rtol=0)
    assert other_gens == gens


def test_command_line_runs_lm_eval_with_the_jaxlm_model(gpt2_dir, tmp_path):
  """`python -m jaxlm.evaluation.lm_eval <lm-eval's arguments>` offline, on a local task."""
  include = write_tasks(tmp_path / "tasks")
  out = tmp_path / "results"
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-m", "jaxlm.evaluation.lm_eval", "--model", "jaxlm",
                         "--model_args", f"hf_dir={gpt2_dir}", "--batch_size", "4", "--tasks", "toy_mc",
                         "--include_path", include, "--output_path", str(out)],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  files = [os.path.join(d, f) for d, _, fs in os.walk(out) for f in fs if f.startswith("results")]
  assert len(files) == 1
  saved = json.loads(open(files[0]).read())
  lls = JaxlmLM(hf_dir=gpt2_dir, batch_size=4).loglikelihood(
      instances("loglikelihood", [(ex["question"], " " + c) for ex in MC for c in ex["choices"]]))
  scores = iter([ll for ll, _ in lls])
  correct = [int(np.argmax([next(scores) for _ in ex["choices"]])) == ex["answer"] for ex in MC]
  assert saved["results"]["toy_mc"]["acc,none"] == pytest.approx(np.mean(correct))
  assert saved["config"]["model"] == "jaxlm"


def test_a_jaxlm_checkpoint_scores_as_the_seqio_evaluator_does(tmp_path):
  """A tiny model trained here (byte vocabulary), restored from its checkpoint with its gin
  file: its lm-eval accuracy on a local multiple-choice task is the SeqIO evaluator's on the
  same file (suites' letters format, written as lm-eval task YAML)."""
  from train_helpers import run_tiny
  from jaxlm.evaluation.evaluator import evaluate
  from jaxlm.evaluation.lm_eval import load_gin_model
  from jaxlm.evaluation.suites import multiple_choice_requests
  gin_file, bindings = "gin_configs/models/tiny_decoder.gin", "TransformerConfig.vocab_size=259"
  config = load_gin_model(gin_file, bindings)
  model_dir = str(tmp_path / "lm")
  run_tiny(model_dir, 5, config=config, checkpoint_every=5, log_every=5)
  mc = tmp_path / "mc.jsonl"
  mc.write_text("".join(json.dumps(ex) + "\n" for ex in MC))
  (tmp_path / "toy_letters.yaml").write_text(  # the letters prompt of suites.multiple_choice_requests
      f"task: toy_letters\ndataset_path: json\ntest_split: test\ndataset_kwargs:\n  data_files:\n    test: {mc}\n"
      "output_type: multiple_choice\n"
      "doc_to_text: \"{{question}}\\n{% for c in choices %}{{'ABCD'[loop.index0]}}. {{c}}\\n{% endfor %}Answer:\"\n"
      "doc_to_choice: \"{{['A', 'B', 'C', 'D'][:choices|length]}}\"\ndoc_to_target: answer\n"
      "metric_list:\n  - metric: acc\n")
  lm = JaxlmLM(checkpoint_dir=model_dir, gin_file=gin_file, gin_bindings=bindings, vocabulary="byte", batch_size=4)
  manager = TaskManager(include_path=str(tmp_path), include_defaults=False)
  out = lm_eval.simple_evaluate(model=lm, tasks=["toy_letters"], task_manager=manager, log_samples=True)
  contexts = [s["arguments"][0][0] for s in out["samples"]["toy_letters"]]
  assert sorted(set(contexts)) == sorted(multiple_choice_requests(ex)[0] for ex in MC)  # the same prompts
  want = evaluate("jaxlm_test_lm_eval_mc", model_dir, config=config, batch_size=4,
                  suite_tasks={"jaxlm_test_lm_eval_mc": ("multiple_choice", str(mc))})
  assert out["results"]["toy_letters"]["acc,none"] == want["jaxlm_test_lm_eval_mc/acc"]
  assert 0.0 < want["jaxlm_test_lm_eval_mc/acc"] < 1.0  # the comparison tells right from wrong answers


def test_infer_job_decodes_a_hugging_face_directory(gpt2_dir, tmp_path):
  """infer.gin with --gin.HF_DIR and no model gin file: the directory's config and tokenizer,
  the same greedy texts as lm-eval's generate_until (which matches HFLM's above)."""
  from jaxlm import main
  (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS[:3]) + "\n")
  rows = main.main(["--gin_file=gin_configs/runs/infer.gin", f"--gin.HF_DIR='{gpt2_dir}'",
                    f"--gin.PROMPTS='{tmp_path / 'prompts.txt'}'", f"--gin.OUTPUT='{tmp_path / 'out.jsonl'}'",
                    "--gin.MAX_NEW_TOKENS=6", "--gin.TOOLS=[]", "--gin.BATCH_SIZE=4"])
  want = JaxlmLM(hf_dir=gpt2_dir, batch_size=4).generate_until(
      instances("generate_until", [(p, {"until": [], "max_gen_toks": 6}) for p in PROMPTS[:3]]))
  assert [r["output"] for r in rows] == want and any(want)


def test_eval_job_scores_a_hugging_face_directory(gpt2_dir, tmp_path):
  """eval.gin with --gin.HF_DIR and no model gin file, on a local multiple-choice file: the
  suite task tokenizes with the directory's tokenizer and each choice is scored after the
  model's own BOS. Accuracy, and ECE (a continuous function of every choice's score), equal
  transformers' forward pass scoring the same tokens."""
  from jaxlm import main
  from jaxlm.evaluation import suites
  path = tmp_path / "mc.jsonl"
  path.write_text("".join(json.dumps(ex) + "\n" for ex in MC))
  got = main.main(["--gin_file=gin_configs/runs/eval.gin", f"--gin.HF_DIR='{gpt2_dir}'",
                   f"--gin.SUITE_TASKS={{'hf_mc': ('multiple_choice', '{path}')}}",
                   f"--gin.EVAL_OUTPUT_DIR='{tmp_path / 'eval'}'"])
  tok = transformers.AutoTokenizer.from_pretrained(gpt2_dir)
  model = transformers.AutoModelForCausalLM.from_pretrained(gpt2_dir).eval()

  def loglikelihood(requests):
    out = []
    for context, continuation in requests:
      c, t = (tok.encode(x, add_special_tokens=False) for x in (context, continuation))
      with torch.no_grad():
        logits = model(torch.tensor([[tok.bos_token_id] + c + t])).logits[0].double()
      logp = torch.log_softmax(logits, -1)
      out.append(float(sum(logp[len(c) + j, i] for j, i in enumerate(t))))
    return out
  want = suites.evaluate_multiple_choice(suites.LOADERS["multiple_choice"](str(path)), loglikelihood)
  assert got["hf_mc/acc"] == want["acc"]
  assert got["hf_mc/ece"] == pytest.approx(want["ece"], abs=1e-5) and want["ece"] > 0


def test_eval_job_refuses_a_task_of_another_vocabulary_for_a_hugging_face_directory(gpt2_dir, tmp_path):
  from jaxlm.evaluation import evaluator, suites
  path = tmp_path / "mc.jsonl"
  path.write_text("".join(json.dumps(ex) + "\n" for ex in MC))
  suites.register_suite_task("bytes_mc", "multiple_choice", str(path))  # seqio's byte vocabulary
  with pytest.raises(ValueError, match=r"task 'bytes_mc' tokenizes 'inputs' with ByteVocabulary.*hf_dir="):
    evaluator.evaluate("bytes_mc", hf_dir=gpt2_dir)
