"""notebooks/: every notebook runs top to bottom (nbclient, a kernel on this venv's Python)
with shortened settings injected after its `parameters` cell, and its last cell's result
says each variant trained: finite losses that fell, and the keys the notebook promises."""
import ast
import json
import math
import os
import sys

import nbformat
import pytest
from nbclient import NotebookClient

from train_helpers import CACHE_DIR, ROOT

NOTEBOOKS = os.path.join(ROOT, "notebooks")
# Shortened: fewer steps, tiny widths and two variants each (every train() run compiles its
# own step: ~5-10 s on 2 CPU cores); tests/test_models_options.py covers every option.
SHORT = {
    "positional_encodings": ("STEPS, LENGTH, EVAL_LENGTHS, D_MODEL, LAYERS = 12, 16, [16, 32], 16, 1\n"
                             "POSITIONS = ['learned', 'alibi']"),
    "norms": "STEPS, LENGTH, D_MODEL, LAYERS = 12, 16, 16, 1\nVARIANTS = [('post', 'rmsnorm'), ('deepnorm', 'layernorm')]",
    "objectives": "STEPS, LENGTH, D_MODEL, LAYERS = 8, 32, 16, 1\nOBJECTIVES = ['prefix_lm', 'ul2']",
    "scaling_laws": "MODELS = [{'d_model': 16, 'num_layers': 1, 'd_ff': 32}]\nSTEPS, BOOTSTRAP = [8, 16], 0",
}


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
  """A kernel spec running this interpreter (the venv's), found through JUPYTER_PATH."""
  root = tmp_path_factory.mktemp("jupyter")
  os.makedirs(root / "kernels" / "jaxlm-venv")
  spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
          "display_name": "jaxlm venv", "language": "python",
          "env": {"JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": CACHE_DIR, "TF_CPP_MIN_LOG_LEVEL": "3"}}
  (root / "kernels" / "jaxlm-venv" / "kernel.json").write_text(json.dumps(spec))
  old = os.environ.get("JUPYTER_PATH")
  os.environ["JUPYTER_PATH"] = str(root)
  yield "jaxlm-venv"
  if old is None:
    os.environ.pop("JUPYTER_PATH")
  else:
    os.environ["JUPYTER_PATH"] = old


def execute(name, kernel_name):
  """Runs notebooks/<name>.ipynb shortened; returns its last cell's value."""
  nb = nbformat.read(os.path.join(NOTEBOOKS, f"{name}.ipynb"), as_version=4)
  first = nb.cells[1].source if nb.cells[0].cell_type == "markdown" else nb.cells[0].source
  assert "pip install -e" in first and all(l.startswith("#") for l in first.splitlines()), "Colab install cell"
  index = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
  assert len(index) == 1, "one cell tagged 'parameters'"
  nb.cells.insert(index[0] + 1, nbformat.v4.new_code_cell(SHORT[name]))
  NotebookClient(nb, kernel_name=kernel_name, timeout=300, resources={"metadata": {"path": ROOT}}).execute()
  images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
  assert images, f"{name} plots nothing"
  return ast.literal_eval(nb.cells[-1].outputs[-1]["data"]["text/plain"])


def fell(entry):
  return math.isfinite(entry["final_loss"]) and entry["final_loss"] < entry["first_loss"]


def test_positional_encodings(kernel):
  result = execute("positional_encodings", kernel)
  assert set(result) == {"learned", "alibi"}
  for position, entry in result.items():
    assert fell(entry), (position, entry)
    assert set(entry["held_out"]) == {16, 32} and all(math.isfinite(v) for v in entry["held_out"].values())


def test_norms(kernel):
  result = execute("norms", kernel)
  assert set(result) == {"post/rmsnorm", "deepnorm/layernorm"}
  assert all(fell(entry) and entry["max_grad_norm"] > 0 for entry in result.values()), result


def test_objectives(kernel):
  result = execute("objectives", kernel)
  assert {k: v["arch"] for k, v in result.items()} == {"prefix_lm": "prefix_decoder", "ul2": "prefix_decoder"}
  assert all(fell(entry) for entry in result.values()), result


def test_scaling_laws(kernel):
  result = execute("scaling_laws", kernel)
  assert result["runs"] == 2 and all(math.isfinite(x) for x in result["losses"])
  assert result["losses"][1] < result["losses"][0]  # twice the steps, lower loss
  assert result["L(C)_exponent"] > 0 and len(result["frontier"]) == 2 and result["chinchilla_fitted"] is False
