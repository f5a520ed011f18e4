"""jaxlm benchmarks: `python -m benchmarks.train_throughput`, `python -m benchmarks.decode_throughput`.

Each writes JSON under benchmarks/results/ (see benchmarks/README.md). They import no
TensorFlow, so they run on a bare GPU box with only the core install.
"""
