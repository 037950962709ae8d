"""APScheduler wiring and the leader lock; jobs only call domain functions."""
