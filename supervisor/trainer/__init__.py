"""What runs inside the trainer process (cooperative shim, trainer lookup) and the protocol both sides share.

Nothing here imports the daemon: it is loaded by nnU-Net's own process."""
