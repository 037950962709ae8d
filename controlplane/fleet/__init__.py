"""The fleet: PostgreSQL servers that host tenant databases, their connections and placement."""
