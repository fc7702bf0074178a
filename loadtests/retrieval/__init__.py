"""The retrieval benchmark's parts (loadtests/retrieval_bench.py is its command line and sweeps)."""
