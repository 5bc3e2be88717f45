"""A tiny synthetic nnU-Net dataset and a short custom trainer, for the demo and the tests."""
