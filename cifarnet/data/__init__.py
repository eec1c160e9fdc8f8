"""Data: decoded datasets and their cache, the seed's augmentation, and per-epoch loaders."""
