"""The evaluators: everything that turns an arch into a number (MACs, params, accuracy, latency)."""
