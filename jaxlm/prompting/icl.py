"""In-context learning: which demonstrations a prompt shows, in which order, and how much
that choice matters.

A prompt is the task description, k demonstrations and the query, worded by a
:class:`jaxlm.data.instructions.Template` exactly as instruction tuning words its
instances (``template.instance(query, demonstrations).prompt()``). Queries and the pool of
demonstrations are raw examples (dicts of fields, e.g. ``generated_tasks.examples``);
similarity compares their worded inputs.

Selection (``ICLConfig.selection``):
  random          a seeded sample of the pool per query
  knn             the k most similar to the query (``ICLConfig.similarity``: 'tfidf',
                  'bm25', or 'embedding', the model's mean-pooled hidden states)
  mmr             maximal marginal relevance (Carbonell & Goldstein 1998): greedily
                  argmax lambda * sim(query, d) - (1 - lambda) * max_{s chosen} sim(d, s)
  cluster         k-means of the pool into k clusters, the member nearest each centroid
                  (Auto-CoT's diversity; the same demonstrations for every query)
  label_balanced  round-robin over the labels (``label_field``), a seeded member of each
Order (``ICLConfig.order``):
  selected        as selected (knn, mmr: most similar first)
  random          seeded shuffle
  similarity      least similar first, most similar last (next to the query: recency)
  global_entropy  Lu et al. (2022): of the candidate orders, the one whose predictions on a
  local_entropy   probing set the model generates itself are most balanced (GlobalE:
                  entropy of the predicted-label histogram) or least confident on average
                  (LocalE: mean entropy of the label distribution)

    prompts = build_prompts(queries, pool, template, ICLConfig(num_shots=4, selection='knn'), lm)
    sensitivity(lambda c: accuracy_of(build_prompts(queries, pool, template, c)), config, runs=5)
"""
from __future__ import annotations

import dataclasses
import itertools
import random
from typing import Any, Callable, Dict, List, Mapping, Sequence, Tuple

import gin
import numpy as np

from jaxlm.data.instructions import Instance, Template
from jaxlm.inference.decoding import DecodeConfig
from jaxlm.prompting.retrieval import SIMILARITIES, TfidfIndex, normalize_rows, similarities, top_k

SELECTIONS = ("random", "knn", "mmr", "cluster", "label_balanced")
ORDERS = ("selected", "random", "similarity", "global_entropy", "local_entropy")
Example = Mapping[str, Any]


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ICLConfig:
  """Every in-context-learning knob (see the module docstring for the choices).

  num_shots       demonstrations per prompt
  selection       how they are chosen; similarity: how selection and 'similarity' order
                  compare texts
  order           how they are ordered
  mmr_lambda      mmr: 1 is pure relevance (knn), 0 pure diversity
  label_field     label_balanced: the field holding the label
  num_probes      entropy orders: probing inputs the model generates per candidate order
  max_orders      entropy orders: candidate permutations (all of them if k! is fewer, else
                  a seeded sample)
  probe_tokens, probe_temperature   how probes are sampled
  seed            every random choice
  An invalid value raises ValueError naming the field.
  """
  num_shots: int = 4
  selection: str = "random"
  similarity: str = "tfidf"
  order: str = "selected"
  mmr_lambda: float = 0.5
  label_field: str = "output"
  num_probes: int = 4
  max_orders: int = 24
  probe_tokens: int = 24
  probe_temperature: float = 1.0
  seed: int = 0

  def __post_init__(self):
    for field, choices in (("selection", SELECTIONS), ("order", ORDERS), ("similarity", SIMILARITIES)):
      if getattr(self, field) not in choices:
        raise ValueError(f"ICLConfig.{field}={getattr(self, field)!r}: expected one of {choices}")
    for field in ("num_shots", "num_probes", "max_orders", "probe_tokens"):
      if getattr(self, field) < (0 if field == "num_shots" else 1):
        raise ValueError(f"ICLConfig.{field}={getattr(self, field)} is too small")
    if not 0.0 <= self.mmr_lambda <= 1.0:
      raise ValueError(f"ICLConfig.mmr_lambda={self.mmr_lambda} must be in [0, 1]")


# ---------------------------------------------------------------- selection
def select_random(pool_size: int, k: int, rng: random.Random) -> List[int]:
  return rng.sample(range(pool_size), min(k, pool_size))


def mmr(query_sims: np.ndarray, pool_sims: np.ndarray, k: int, lam: float) -> List[int]:
  """Maximal marginal relevance: k pool indices, greedily the argmax of lam * relevance -
  (1 - lam) * the largest similarity to those already chosen (ties: the lower index)."""
  chosen: List[int] = []
  for _ in range(min(k, len(query_sims))):
    redundancy = pool_sims[:, chosen].max(1) if chosen else np.zeros(len(query_sims))
    value = lam * np.asarray(query_sims, np.float64) - (1.0 - lam) * redundancy
    value[chosen] = -np.inf
    chosen.append(int(np.argmax(value)))
  return chosen


def kmeans(x: np.ndarray, k: int, seed: int = 0, iterations: int = 100) -> Tuple[np.ndarray, np.ndarray]:
  """Lloyd's k-means with k-means++ seeding: (centroids [k, d], labels [n]); an emptied
  cluster takes the point farthest from its centroid."""
  x = np.asarray(x, np.float64)
  if not 1 <= k <= len(x):
    raise ValueError(f"kmeans: k={k} clusters need 1 <= k <= {len(x)} points")
  rng = np.random.default_rng(seed)
  centroids = [x[rng.integers(len(x))]]
  for _ in range(1, k):
    d2 = ((x[:, None] - np.array(centroids)[None]) ** 2).sum(-1).min(1)
    probs = d2 / d2.sum() if d2.sum() > 0 else np.full(len(x), 1.0 / len(x))
    centroids.append(x[rng.choice(len(x), p=probs)])
  centroids = np.array(centroids)
  labels = np.full(len(x), -1)
  for _ in range(iterations):
    d2 = ((x[:, None] - centroids[None]) ** 2).sum(-1)
    new = d2.argmin(1)
    for c in range(k):
      if not (new == c).any():
        far = int(d2[np.arange(len(x)), new].argmax())
        new[far] = c
    if (new == labels).all():
      break
    labels = new
    centroids = np.stack([x[labels == c].mean(0) for c in range(k)])
  return centroids, labels


def select_by_cluster(vectors: np.ndarray, k: int, seed: int = 0) -> List[int]:
  """One index per k-means cluster: the member nearest its centroid (clusters in the order
  of their representative's index)."""
  centroids, labels = kmeans(vectors, k, seed)
  picks = []
  for c in range(len(centroids)):
    members = np.flatnonzero(labels == c)
    dist = ((np.asarray(vectors)[members] - centroids[c]) ** 2).sum(-1)
    picks.append(int(members[dist.argmin()]))
  return sorted(picks)


def select_label_balanced(labels: Sequence[str], k: int, rng: random.Random) -> List[int]:
  """k indices, round-robin over the sorted labels, a seeded member of each (without
  repeats); then shuffled, so no label always comes last."""
  by_label: Dict[str, List[int]] = {}
  for i, label in enumerate(labels):
    by_label.setdefault(label, []).append(i)
  for members in by_label.values():
    rng.shuffle(members)
  picks, queues = [], [by_label[l] for l in sorted(by_label)]
  while len(picks) < min(k, len(labels)):
    for queue in queues:
      if queue and len(picks) < k:
        picks.append(queue.pop())
  rng.shuffle(picks)
  return picks


# ------------------------------------------------------------------ entropy
def entropy(p: np.ndarray, axis: int = -1) -> np.ndarray:
  """Shannon entropy (nats) of distributions along axis; 0 log 0 = 0."""
  p = np.asarray(p, np.float64)
  return -(p * np.log(np.where(p > 0, p, 1.0))).sum(axis)


def global_entropy(label_probs: np.ndarray) -> float:
  """GlobalE of [probes, labels] predictions: entropy of the histogram of argmax labels."""
  probs = np.asarray(label_probs)
  counts = np.bincount(probs.argmax(-1), minlength=probs.shape[-1])
  return float(entropy(counts / max(1, counts.sum())))


def local_entropy(label_probs: np.ndarray) -> float:
  """LocalE of [probes, labels] predictions: the mean entropy of each probe's distribution."""
  return float(np.mean(entropy(label_probs)))


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
  x = np.asarray(x, np.float64)
  e = np.exp(x - x.max(axis, keepdims=True))
  return e / e.sum(axis, keepdims=True)


def candidate_orders(k: int, max_orders: int, seed: int) -> List[Tuple[int, ...]]:
  """Every permutation of range(k) when there are at most max_orders, else a seeded sample."""
  if k <= 8:
    orders = list(itertools.permutations(range(k)))
    if len(orders) <= max_orders:
      return orders
    return random.Random(seed).sample(orders, max_orders)
  rng = random.Random(seed)
  return [tuple(rng.sample(range(k), k)) for _ in range(max_orders)]


@dataclasses.dataclass
class OrderScores:
  """Lu et al.'s probing of candidate orders: the orders, the probing inputs, the label
  distributions [orders, probes, labels], and GlobalE / LocalE per order."""
  orders: List[Tuple[int, ...]]
  probes: List[str]
  label_probs: np.ndarray
  global_entropy: np.ndarray
  local_entropy: np.ndarray


def probing_inputs(lm, instruction: str, shots_by_order: Sequence[Sequence[Tuple[str, str]]],
                   config: ICLConfig) -> List[str]:
  """The probing set: for each order, num_probes samples of what the model writes after
  its demonstrations (a new input: the first non-empty line of the continuation)."""
  prompts = [Instance(instruction, "", "", tuple(shots)).prompt() + "\n" for shots in shots_by_order]
  decoding = DecodeConfig(method="sample", max_new_tokens=config.probe_tokens, temperature=config.probe_temperature,
                          seed=config.seed)
  probes = []
  for texts in lm.samples(prompts, config.num_probes, decoding):
    for text in texts:
      lines = [line.strip() for line in text.split("\n") if line.strip()]
      probes.append(lines[0] if lines else text.strip())
  return probes


def score_orders(lm, instruction: str, shots: Sequence[Tuple[str, str]], labels: Sequence[str],
                 config: ICLConfig) -> OrderScores:
  """GlobalE and LocalE of every candidate order of `shots` (worded (input, target) pairs),
  on the probing set the model generates from all of them, over the label words."""
  orders = candidate_orders(len(shots), config.max_orders, config.seed)
  ordered = [[shots[i] for i in order] for order in orders]
  probes = probing_inputs(lm, instruction, ordered, config)
  prompts = [Instance(instruction, probe, "", tuple(s)).prompt() for s in ordered for probe in probes]
  scores = lm.score([p for p in prompts for _ in labels], [l for _ in prompts for l in labels])
  probs = softmax(scores.reshape(len(orders), len(probes), len(labels)))
  return OrderScores(orders, probes, probs, np.array([global_entropy(p) for p in probs]),
                     np.array([local_entropy(p) for p in probs]))


# ------------------------------------------------------------------ prompts
def worded_inputs(examples: Sequence[Example], template: Template) -> List[str]:
  return [template.parts(ex)[0] for ex in examples]


def demonstrations(queries: Sequence[Example], pool: Sequence[Example], template: Template, config: ICLConfig,
                   lm=None) -> List[List[int]]:
  """Pool indices of each query's demonstrations, in prompt order."""
  k = min(config.num_shots, len(pool))
  if not k:
    return [[] for _ in queries]
  needs_sims = config.selection in ("knn", "mmr") or config.order == "similarity"
  query_text, pool_text = worded_inputs(queries, template), worded_inputs(pool, template)
  sims = similarities(config.similarity, query_text, pool_text, lm) if needs_sims else None
  fixed = None
  if config.selection == "cluster":
    if config.similarity == "embedding":
      vectors = normalize_rows(lm.embed(pool_text))
    else:
      vectors = TfidfIndex(pool_text).vectors(pool_text)
    fixed = select_by_cluster(vectors, k, config.seed)
  pool_sims = similarities(config.similarity, pool_text, pool_text, lm) if config.selection == "mmr" else None
  out = []
  for i in range(len(queries)):
    rng = random.Random(f"{config.seed}:icl:{i}")
    if config.selection == "random":
      picks = select_random(len(pool), k, rng)
    elif config.selection == "knn":
      picks = top_k(sims[i], k)
    elif config.selection == "mmr":
      picks = mmr(sims[i], pool_sims, k, config.mmr_lambda)
    elif config.selection == "cluster":
      picks = list(fixed)
    else:
      picks = select_label_balanced([str(ex[config.label_field]) for ex in pool], k, rng)
    if config.order == "random":
      rng.shuffle(picks)
    elif config.order == "similarity":
      picks = sorted(picks, key=lambda j: (sims[i][j], -j))  # most similar last
    out.append(picks)
  return out


def build_prompts(queries: Sequence[Example], pool: Sequence[Example], template: Template, config: ICLConfig,
                  lm=None) -> List[str]:
  """The few-shot prompt of every query. Entropy orders need ``lm`` (a PromptLM) and probe
  each distinct demonstration set once; the labels are the pool's worded outputs."""
  picks = demonstrations(queries, pool, template, config, lm)
  if config.order in ("global_entropy", "local_entropy"):
    if lm is None:
      raise ValueError(f"ICLConfig.order={config.order!r} needs the model (a jaxlm.prompting.PromptLM)")
    labels = sorted({template.parts(ex)[2] for ex in pool})
    best: Dict[Tuple[int, ...], List[int]] = {}
    for p in picks:
      key = tuple(sorted(p))
      if key not in best:
        scores = score_orders(lm, template.instance(pool[key[0]]).instruction,
                              shots_of(template, [pool[j] for j in key]), labels, config)
        values = scores.global_entropy if config.order == "global_entropy" else scores.local_entropy
        best[key] = [key[j] for j in scores.orders[int(np.argmax(values))]]
    picks = [best[tuple(sorted(p))] for p in picks]
  return [template.instance(q, [pool[j] for j in p]).prompt() for q, p in zip(queries, picks)]



# -------------------------------------------------------------- sensitivity
def sensitivity(evaluate: Callable[[ICLConfig], float], config: ICLConfig, runs: int = 5) -> Dict[str, Any]:
  """How much the choice of demonstrations matters: evaluate(config) for `runs` seeds of
  random selection in random order; the accuracies' mean, standard deviation, min, max."""
  values = [float(evaluate(dataclasses.replace(config, selection="random", order="random", seed=config.seed + r)))
            for r in range(runs)]
  return {"mean": float(np.mean(values)), "std": float(np.std(values)), "min": min(values), "max": max(values),
          "runs": values}


def shots_of(template: Template, examples: Sequence[Example]) -> List[Tuple[str, str]]:
  """(input, target) texts of examples worded as demonstrations."""
  return list(template.instance(examples[0], examples).demonstrations) if examples else []

