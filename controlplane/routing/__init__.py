"""Tenant resolution: which tenant a request is for (path, subdomain, header), and the registry cache."""
