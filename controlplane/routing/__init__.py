"""Tenant resolution: which tenant a request is for (path, subdomain, header), and the registry cache.

HTTP-free: ``controlplane.http.tenant_api`` applies it to requests.
"""
