"""Deployment: the systemd unit and its notify protocol, the SLURM batch script and requeue."""
