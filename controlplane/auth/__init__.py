"""Authentication: tenant users, sessions, tokens, and abuse protection (rate limiting, login throttling)."""
