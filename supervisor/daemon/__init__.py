"""The supervisor process: a runner that acts, sensors that turn facts into events, publishing, the trainer tree."""
