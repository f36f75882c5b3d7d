"""Speed, memory and quality benchmarks (run by hand: ``python -m benchmarks.<name>``; not part of CI)."""
