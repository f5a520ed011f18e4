import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import gin  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def fresh_gin_config():
  """Every test starts and ends with an empty, unlocked gin config: jaxlm.main and
  gin.parse_config_files_and_bindings finalize (lock) it, and a worker runs many tests."""
  gin.clear_config()
  yield
  gin.clear_config()
