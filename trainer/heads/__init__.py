"""Method heads on top of the CLIP towers (one module per method)."""
