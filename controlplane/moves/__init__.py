"""Online tenant moves between servers (issue 15)."""
