"""What the benchmarks share: the open-loop scheduler and its HTTP sender (openloop), the report writer
and the machine description (report), and process-tree CPU and memory (process_tree). The processes
they start are supervised by runners/platform/processes.py, which the tests and the service use too."""
