"""Preprocessing as a stage: one dataset's planning and preprocessing (nnU-Net's own code, through the resumable
shim supervisor.trainer.preprocess), its progress the cases written, "done" every training case of every
configuration present and verified."""
