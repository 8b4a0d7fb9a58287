"""Load benchmarks and the test doubles they share with the test suite."""
