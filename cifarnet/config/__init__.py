"""Configuration: the strict, frozen run config, its presets, and reading YAML specs safely.

Lowest layer after `cifarnet.errors`: imports nothing else from the package."""
