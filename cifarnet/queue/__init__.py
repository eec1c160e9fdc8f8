"""The work queue: ablation jobs as trials on Optuna's RDB storage, shared by many workers.

With `cifarnet.search`, the only layer that imports Optuna."""
