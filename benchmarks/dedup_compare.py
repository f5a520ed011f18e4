"""Near-duplicate detection: jaxlm's MinHash-LSH against datasketch's (a benchmark).

    python -m benchmarks.dedup_compare [--documents 1500] [--planted 500] [--threshold 0.8]
        [--num_perm 128] [--seeds 0,1,2,3,4] [--output benchmarks/results/dedup_compare.json]

The corpus is the embedded prose (jaxlm.data.sources) documents of at least
``--min_words`` words. Into it we plant, for a seeded sample of ``--planted`` originals,
a near copy (0.5-1.5% of the words replaced: true 5-gram Jaccard mostly 0.8-0.97) and a
distant copy (15% replaced: Jaccard <= 0.5). The stream is
the originals, then the copies in a seeded order. Each deduplicator sees the stream once,
keeps a document unless an earlier kept one is estimated at Jaccard >= threshold, and
is scored on

* ``recall``: share of the planted copies whose true Jaccard with their original is at
  least the threshold that are dropped (and, apart, of those at least 0.05 above it);
* ``false_positives``: documents dropped although their true Jaccard with the kept
  document they matched is below the threshold (distant copies or distinct originals);
* ``docs_per_s``: stream documents per second (signature, query and insert).

Both use word 5-gram shingles of the same normalized text, the same threshold and number
of permutations, and the same LSH weighting (false negatives 9x false positives, as
:class:`jaxlm.data.dedup.NearDedup` does); both verify LSH candidates by the signatures'
estimated Jaccard. They differ in the shingle hash (crc32 vs datasketch's sha1), the
permutation arithmetic, and the banding code.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

from jaxlm.data import dedup, sources

FP_WEIGHT, FN_WEIGHT = 0.1, 0.9


def perturb(text: str, fraction: float, seed: int) -> str:
  """``text`` with a seeded ``fraction`` of its words replaced by fresh ones."""
  rng = random.Random(seed)
  ws = text.split()
  for i in rng.sample(range(len(ws)), int(len(ws) * fraction)):
    ws[i] = f"zz{rng.randrange(10 ** 6)}"
  return " ".join(ws)


def planted_corpus(documents: Sequence[str], planted: int, seed: int = 0) -> List[Dict[str, object]]:
  """The stream ``{"id", "text", "kind", "of", "jaccard"}``: originals, then the copies.

  Each of ``planted`` seeded originals gets a near copy (0.5-1.5% of its words replaced)
  and a distant one (15%); ``jaccard`` is the copy's true 5-gram Jaccard with its original.
  """
  rng = random.Random(seed)
  stream = [{"id": i, "text": t, "kind": "original", "of": None, "jaccard": None} for i, t in enumerate(documents)]
  copies = []
  for j, i in enumerate(rng.sample(range(len(documents)), min(planted, len(documents)))):
    for kind, fraction in (("near", rng.choice((0.005, 0.01, 0.015))), ("distant", 0.15)):
      text = perturb(documents[i], fraction, seed * 7919 + 2 * j + (kind == "distant"))
      copies.append({"text": text, "kind": kind, "of": i, "jaccard": dedup.jaccard(text, documents[i])})
  rng.shuffle(copies)
  for k, copy in enumerate(copies):
    stream.append({"id": len(documents) + k, **copy})
  return stream


class JaxlmNearDedup:
  """:class:`jaxlm.data.dedup.NearDedup`, reporting which kept document a drop matched."""
  name = "jaxlm"

  def __init__(self, threshold: float, num_perm: int):
    self.stage = dedup.NearDedup(threshold, num_perm, fp_weight=FP_WEIGHT, fn_weight=FN_WEIGHT)
    self.kept: List[int] = []
    self.params = (self.stage.bands, self.stage.rows)

  def __call__(self, doc_id: int, text: str) -> Optional[int]:
    best, sim, sig = self.stage.query(text)
    if best is not None and sim >= self.stage.threshold:
      return self.kept[best]
    self.stage.insert(sig)
    self.kept.append(doc_id)
    return None


class DatasketchNearDedup:
  """datasketch's ``MinHash`` + ``MinHashLSH``, candidates verified by ``MinHash.jaccard``."""
  name = "datasketch"

  def __init__(self, threshold: float, num_perm: int):
    import datasketch  # pylint: disable=import-outside-toplevel

    self.datasketch, self.threshold, self.num_perm = datasketch, threshold, num_perm
    self.lsh = datasketch.MinHashLSH(threshold=threshold, num_perm=num_perm, weights=(FP_WEIGHT, FN_WEIGHT))
    self.signatures: Dict[int, object] = {}
    self.params = (self.lsh.b, self.lsh.r)

  def __call__(self, doc_id: int, text: str) -> Optional[int]:
    sig = self.datasketch.MinHash(num_perm=self.num_perm, seed=1)
    sig.update_batch([g.encode("utf-8") for g in dedup.shingles(text)])
    best, best_sim = None, 0.0
    for key in self.lsh.query(sig):
      sim = sig.jaccard(self.signatures[key])
      if sim > best_sim:
        best, best_sim = key, sim
    if best is not None and best_sim >= self.threshold:
      return best
    self.lsh.insert(doc_id, sig)
    self.signatures[doc_id] = sig
    return None


IMPLEMENTATIONS = {"jaxlm": JaxlmNearDedup, "datasketch": DatasketchNearDedup}


def evaluate(stream: Sequence[Dict[str, object]], implementation: str, threshold: float = 0.8,
             num_perm: int = 128) -> Dict[str, object]:
  """Run one deduplicator over ``stream`` (see :func:`planted_corpus`) and score it."""
  dedup_fn = IMPLEMENTATIONS[implementation](threshold, num_perm)
  texts = {d["id"]: d["text"] for d in stream}
  matches: List[Tuple[Dict[str, object], Optional[int]]] = []
  start = time.perf_counter()
  for doc in stream:
    matches.append((doc, dedup_fn(doc["id"], doc["text"])))
  seconds = time.perf_counter() - start
  copies = [(d, m) for d, m in matches if d["kind"] != "original"]
  above = [m for d, m in copies if d["jaccard"] >= threshold]  # the pairs to find
  clear = [m for d, m in copies if d["jaccard"] >= threshold + 0.05]
  below = [m for d, m in copies if d["jaccard"] < threshold]
  false_positives = sum(1 for d, m in matches if m is not None and dedup.jaccard(d["text"], texts[m]) < threshold)
  rate = lambda ms: round(sum(m is not None for m in ms) / max(1, len(ms)), 4)
  return {"implementation": implementation, "bands_rows": list(dedup_fn.params), "documents": len(stream),
          "planted_pairs_at_or_above_threshold": len(above), "recall": rate(above),
          "recall_jaccard_threshold_plus_0.05": rate(clear), "planted_below_threshold": len(below),
          "false_positives": false_positives,
          "originals_dropped": sum(1 for d, m in matches if d["kind"] == "original" and m is not None),
          "seconds": round(seconds, 3), "docs_per_s": round(len(stream) / seconds, 1)}


def compare(documents: int = 1500, planted: int = 500, threshold: float = 0.8, num_perm: int = 128,
            min_words: int = 50, seed: int = 0, implementations: Sequence[str] = tuple(IMPLEMENTATIONS)):
  """Results of every implementation on the same planted stream of the embedded prose."""
  docs = [d["text"] for d in sources.embedded_documents("prose") if len(d["text"].split()) >= min_words]
  docs = docs[:documents]
  stream = planted_corpus(docs, planted, seed)
  return {name: evaluate(stream, name, threshold, num_perm) for name in implementations}


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m benchmarks.dedup_compare", description=__doc__.split("\n\n")[0])
  parser.add_argument("--documents", type=int, default=1500, help="originals (embedded prose)")
  parser.add_argument("--planted", type=int, default=500, help="originals that get a near and a distant copy")
  parser.add_argument("--threshold", type=float, default=0.8)
  parser.add_argument("--num_perm", type=int, default=128)
  parser.add_argument("--min_words", type=int, default=50)
  parser.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated: one planted stream per seed")
  parser.add_argument("--output", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                       "results", "dedup_compare.json"))
  args = parser.parse_args(argv)
  import datasketch  # pylint: disable=import-outside-toplevel

  seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
  runs = {seed: compare(args.documents, args.planted, args.threshold, args.num_perm, args.min_words, seed)
          for seed in seeds}
  summary = {}
  for name in IMPLEMENTATIONS:
    rows = [runs[seed][name] for seed in seeds]
    summary[name] = {"recall_mean": round(sum(r["recall"] for r in rows) / len(rows), 4),
                     "recall_min": min(r["recall"] for r in rows),
                     "false_positives_total": sum(r["false_positives"] for r in rows),
                     "docs_per_s_median": sorted(r["docs_per_s"] for r in rows)[len(rows) // 2],
                     "bands_rows": rows[0]["bands_rows"], "documents_per_run": rows[0]["documents"],
                     "planted_pairs_per_run": rows[0]["planted_pairs_at_or_above_threshold"]}
  report = {"benchmark": "dedup_compare", "corpus": "embedded prose + planted near/distant copies",
            "threshold": args.threshold, "num_perm": args.num_perm, "seeds": seeds,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "python": sys.version.split()[0], "datasketch": datasketch.__version__},
            "summary": summary, "runs": {str(k): v for k, v in runs.items()}}
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  with open(args.output, "w", encoding="utf-8") as handle:
    json.dump(report, handle, indent=1)
  print(json.dumps(summary, indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
