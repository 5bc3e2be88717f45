"""nnunet-supervise: keep an nnU-Net v2 training alive through crashes, hangs and restarts."""

__version__ = "0.1.0"
