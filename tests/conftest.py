import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# The modules holding the suite's longest tests (learning runs, the quickstart end to end)
# are collected first, so that pytest-xdist starts them at once on the two workers and
# fills in with the short tests, instead of one worker finishing a long test alone at the
# end. `make test` schedules whole modules (--dist loadscope), so a module-scoped fixture
# (one trained model shared by a module's tests) is built once.
LONG_MODULES = ("test_quickstart.py", "test_prompting_learning.py", "test_adaptation_sft_learning.py",
                "test_adaptation_peft_learning.py", "test_adaptation_peft_methods.py", "test_models_options.py",
                "test_train_multihost.py", "test_adaptation_reward.py", "test_adaptation_dpo.py",
                "test_adaptation_ppo.py")


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(LONG_MODULES)}
  items.sort(key=lambda item: rank.get(os.path.basename(str(item.fspath)), len(rank)))
