"""Looking at runs: status, report, terminal line, metrics, notifications, and `stop` from outside."""
