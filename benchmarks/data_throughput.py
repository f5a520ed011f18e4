"""Data pipeline throughput on the embedded corpus, in tokens/s (a benchmark, not a test).

    python benchmarks/data_throughput.py [--groups 4] [--cleaning_documents 500]
        [--output benchmarks/results/data_throughput.json]

For each configuration it builds a :class:`jaxlm.data.DataPipeline` with the default
embedded vocabulary and times the first batch (start-up: corpus, tokenizer, shuffle and
packing buffers). SeqIO packs groups of ``max(feature length)`` examples at a time, so
it then skips one such group's worth of batches and times the next ``--groups`` groups'
worth (steady state). Reported:

* ``tokens_per_s``: token slots delivered per second (batch x length, padding included);
* ``nonpad_tokens_per_s``: real tokens per second (encoder + decoder, padding excluded);
* ``padding_fraction`` and ``first_batch_s``.

``--cleaning_documents N`` also times each prose cleaning stage (``cleaning_job``'s
defaults, language identification included) on the first N embedded prose documents:
documents/s and characters/s per stage, its start-up (first document) apart.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

CONFIGS = [
    # name, task or mixture, feature converter, task feature lengths, per-host batch size
    ("causal_lm_packed", "embedded_mix", "decoder", {"targets": 1024}, 16),
    ("span_corruption_packed", "embedded_mix_span_corruption", "encoder_decoder", {"inputs": 512, "targets": 114}, 32),
    ("ul2_prefix_lm_packed", "embedded_mix_ul2", "prefix_decoder", {"inputs": 512, "targets": 512}, 16),
]


def _count(batch):
  slots = sum(batch[k].size for k in ("decoder_target_tokens", "encoder_input_tokens") if k in batch)
  real = int((batch["decoder_target_tokens"] != 0).sum())
  if "encoder_input_tokens" in batch:
    real += int((batch["encoder_input_tokens"] != 0).sum())
  return slots, real


def measure(task, converter, lengths, batch_size, groups):
  from jaxlm.data.pipeline import DataPipeline  # pylint: disable=import-outside-toplevel

  start = time.perf_counter()
  pipe = DataPipeline(task, lengths, batch_size=batch_size, feature_converter=converter, pack=True,
                      seed=0, shard_index=0, num_shards=1)
  next(pipe)
  first = time.perf_counter() - start
  group_batches = max(1, max(lengths.values()) // batch_size)
  steps = groups * group_batches
  for _ in range(group_batches):
    next(pipe)
  slots = real = 0
  start = time.perf_counter()
  for _ in range(steps):
    s, r = _count(next(pipe))
    slots, real = slots + s, real + r
  elapsed = time.perf_counter() - start
  return {"task": task, "feature_converter": converter, "feature_lengths": lengths, "batch_size": batch_size,
          "steps": steps, "first_batch_s": round(first, 2), "seconds": round(elapsed, 2),
          "tokens_per_s": round(slots / elapsed), "nonpad_tokens_per_s": round(real / elapsed),
          "padding_fraction": round(1 - real / slots, 4), "vocab_size": pipe.vocab_size}


def measure_cleaning(num_documents):
  """Per cleaning stage: seconds for its first document, then documents/s and chars/s."""
  from jaxlm.data import cleaning_job, sources  # pylint: disable=import-outside-toplevel

  docs = [d["text"] for d in sources.embedded_documents("prose", "train")[:num_documents + 1]]
  stages = ("language", "quality", "repetition", "keywords", "repeated_sentences", "exact_dedup",
            "near_dedup", "perplexity", "pii")
  results = {}
  for stage in cleaning_job.default_cleaning_pipeline(stages=stages).stages:
    start = time.perf_counter()
    stage.process(docs[0])  # start-up: the language profiles, the reference n-gram LM
    first = time.perf_counter() - start
    start = time.perf_counter()
    for text in docs[1:]:
      stage.process(text)
    elapsed = time.perf_counter() - start
    results[stage.name] = {"first_document_s": round(first, 3), "documents": len(docs) - 1,
                           "docs_per_s": round((len(docs) - 1) / elapsed, 1),
                           "chars_per_s": round(sum(map(len, docs[1:])) / elapsed)}
  return results


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--groups", type=int, default=4, help="packing groups timed per configuration")
  parser.add_argument("--configs", default=",".join(c[0] for c in CONFIGS))
  parser.add_argument("--cleaning_documents", type=int, default=0,
                      help="also time each cleaning stage on this many embedded prose documents")
  parser.add_argument("--output", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                       "results", "data_throughput.json"))
  args = parser.parse_args(argv)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  wanted = set(args.configs.split(","))
  results = {}
  for name, task, converter, lengths, batch_size in CONFIGS:
    if name in wanted:
      results[name] = measure(task, converter, lengths, batch_size, args.groups)
      print(name, json.dumps(results[name]), flush=True)
  if args.cleaning_documents:
    results["cleaning_stages"] = measure_cleaning(args.cleaning_documents)
    print("cleaning_stages", json.dumps(results["cleaning_stages"]), flush=True)
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  report = {"benchmark": "data_throughput", "corpus": "embedded (Python stdlib prose + code)",
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0],
                        "tensorflow": tf.__version__},
            "results": results}
  os.makedirs(os.path.dirname(args.output), exist_ok=True)
  with open(args.output, "w") as handle:
    json.dump(report, handle, indent=1)
  print(json.dumps(report, indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
