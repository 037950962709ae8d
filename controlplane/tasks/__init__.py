"""The distributed task queue (issue 15): per-tenant fan-out work that every control-plane process works from."""
