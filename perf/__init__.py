"""numrnn's benchmarks: each case is checked before it is timed."""
