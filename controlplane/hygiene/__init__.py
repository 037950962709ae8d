"""Storage hygiene: files with no row and rows with no file, quarantined then deleted."""
