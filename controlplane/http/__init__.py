"""HTTP plumbing shared by every API module: error handlers, health, the admin guard."""
