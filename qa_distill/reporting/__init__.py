"""Results tables from the tracking store: what the chain trained, side by side, per budget."""
