"""Enterprise SSO: a tenant's own OpenID Connect provider signs its people in (authorization code flow
with PKCE), creating users just in time with a default role; password sign-in can be switched off."""
