"""The Triton benchmark's parts (loadtests/triton_bench.py is its command line and scenarios)."""
