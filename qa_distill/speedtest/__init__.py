"""The CPU speed test: latency, throughput, size and EM/F1 per model and backend, beside the HF pipeline."""
