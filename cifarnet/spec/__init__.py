"""Specs at the bottom: ablation specs, search specs and `tune:` blocks, and the metrics they name."""
