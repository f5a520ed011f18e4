"""benchmarks.dedup_compare on a tiny planted corpus: both MinHash-LSH implementations
find the planted near duplicates and keep the distant copies (quality, not timing)."""
import pytest

from benchmarks import dedup_compare
from jaxlm.data import dedup, sources


@pytest.fixture(scope="module")
def stream():
  docs = [d["text"] for d in sources.embedded_documents("prose") if len(d["text"].split()) >= 80][:60]
  return dedup_compare.planted_corpus(docs, planted=20, seed=3)


def test_planted_corpus_has_pairs_on_both_sides_of_the_threshold(stream):
  near = [d for d in stream if d["kind"] == "near"]
  distant = [d for d in stream if d["kind"] == "distant"]
  assert len(near) == len(distant) == 20 and len(stream) == 100
  assert all(d["jaccard"] >= 0.85 for d in near) and all(d["jaccard"] <= 0.5 for d in distant)
  assert near[0]["jaccard"] == dedup.jaccard(near[0]["text"], stream[near[0]["of"]]["text"])


@pytest.mark.parametrize("implementation", ["jaxlm", "datasketch"])
def test_dedup_finds_planted_near_duplicates(stream, implementation):
  result = dedup_compare.evaluate(stream, implementation, threshold=0.8, num_perm=128)
  assert result["bands_rows"] == [14, 9]  # the same LSH parameters for both
  assert result["planted_pairs_at_or_above_threshold"] == 20
  assert result["recall"] >= 0.95
  assert result["false_positives"] <= 1
