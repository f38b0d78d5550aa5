"""Benchmarks (`optforge bench`): step time and GB/s against the same-traffic limit, torch and DeepSpeed.

Development tooling, not the run-time path: it imports the compiler (to count
the bytes a compiled step moves) and, when installed, torch, DeepSpeed and
matplotlib. `pip install -e ".[bench]"` installs all three.
"""
