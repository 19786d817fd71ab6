"""The machine a run is on: CPU, processes, threads, progress lines, distributed launch."""
