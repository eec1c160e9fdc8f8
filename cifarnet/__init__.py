"""cifarnet-exp: ablations of a small CIFAR-10 CNN, tracked in MLflow, answered with statistics."""

__version__ = "0.1.0"
