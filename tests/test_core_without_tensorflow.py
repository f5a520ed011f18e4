"""The core imports no TensorFlow (DESIGN.md): models, training, inference, the entry point
and the benchmark harness run where only jax, flax, optax, orbax and gin exist (a GPU box).

Each check runs in a fresh interpreter whose import system refuses tensorflow, seqio and
tensorflow_datasets, so an import of them anywhere below the module fails the test.
"""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCKER = """
import sys
class Block:
  def find_spec(self, name, path=None, target=None):
    if name.split('.')[0] in ('tensorflow', 'seqio', 'tensorflow_datasets'):
      raise ImportError('blocked ' + name)
sys.meta_path.insert(0, Block())
"""


@pytest.mark.parametrize("modules", [
    "jaxlm.models, jaxlm.models.convert",
    "jaxlm.training, jaxlm.training.trainer, jaxlm.inference, jaxlm.main",
    "benchmarks.train_throughput, benchmarks.decode_throughput, benchmarks.common",
])
def test_imports_without_tensorflow(modules):
  code = BLOCKER + f"import {modules}\n" + (
      "assert not any(m.split('.')[0] in ('tensorflow', 'seqio') for m in sys.modules)\nprint('ok')\n")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]
