"""The tenants registry: tenant rows and their quotas in the control database."""
