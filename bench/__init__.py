"""pyqueue benchmark suite (``python -m bench.compare``, ``pytest bench/``)."""
