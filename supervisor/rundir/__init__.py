"""The files the supervisor keeps in a run directory: state.json, events.jsonl and the lock."""
