"""moebench: a benchmark suite for Mixture-of-Experts routing algorithms."""
