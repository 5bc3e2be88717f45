"""nnU-Net checkpoints: read without torch, verify (structure, content, compatibility), plan the resume, move safely."""
