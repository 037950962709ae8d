import psycopg

from controlplane.provisioning.service import TenantService
from controlplane.registry.models import TenantStatus


async def test_create_and_purge(service: TenantService, platform) -> None:
    tenant = await service.create(name="Acme Cards", slug="acme", tier="starter")
    assert tenant.status is TenantStatus.ACTIVE
    t2 = await service.suspend("acme")
    assert t2.status is TenantStatus.SUSPENDED
    await service.resume("acme")
    await service.delete("acme", now=True)
