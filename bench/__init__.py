"""Benchmarks of sqlward (not part of the installed package; see bench/harness.py for how the
scripts share their code and run both as `python bench/X.py` and as `python -m bench.X`)."""
