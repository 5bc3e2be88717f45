"""The pure decisions: the run lifecycle, restart policy, exit classification, stall timing. No OS access."""
