"""Benchmarks run by ``python -m mpdist bench <name>``: each module has ``main(argv) -> int``.

Benchmarks print tables; tests never assert on wall time.
"""
