"""The entry point: gin files and --gin.X=V bindings build the model; bad bindings fail early."""
import subprocess
import sys

import gin
import pytest

from jaxlm import main


@pytest.fixture(autouse=True)
def clear_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def test_gin_file_and_binding_build_the_model(capsys):
  n = main.main(["--gin_file=gin_configs/models/tiny_decoder.gin", "--gin.TransformerConfig.d_model=96"])
  out = capsys.readouterr().out
  assert "d_model=96" in out and f"parameters: {n:,}" in out
  assert 50_000 < n < 1_000_000


@pytest.mark.parametrize("name,low,high", [("gpt2_small", 123e6, 126e6), ("llama_1b", 1.0e9, 1.2e9),
                                           ("t5_1_1_base", 240e6, 255e6)])
def test_reference_configs_have_their_published_sizes(name, low, high, capsys):
  n = main.main([f"--gin_file=gin_configs/models/{name}.gin"])
  assert low < n < high


def test_a_binding_that_names_nothing_fails_before_any_work():
  out = subprocess.run([sys.executable, "-m", "jaxlm.main", "--gin_file=gin_configs/models/tiny_decoder.gin",
                        "--gin.TransformerConfig.d_modl=3"], capture_output=True, text=True, timeout=300)
  assert out.returncode != 0 and "d_modl" in out.stderr and "parameters" not in out.stdout
