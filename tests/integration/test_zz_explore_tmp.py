import psycopg
from controlplane.provisioning.service import TenantService
from controlplane.registry import repository as registry
from psycopg import conninfo

async def test_explore(service: TenantService, platform, control_dsn, pg_admin_dsn) -> None:
    t = await service.create(name="Acme", slug="acme", tier="starter")
    t2 = await service.create(name="Other", slug="other", tier="starter")
    async with platform.control.connection() as conn:
        pw = platform.box.decrypt(await registry.role_password_encrypted(conn, t.id))
    dsn = conninfo.make_conninfo(pg_admin_dsn, user=t.role_name, password=pw, dbname=t2.database_name)
    try:
        await psycopg.AsyncConnection.connect(dsn)
    except Exception as e:
        print("other", type(e), e.sqlstate, repr(str(e)), e.pgconn)
    c = await psycopg.AsyncConnection.connect(conninfo.make_conninfo(pg_admin_dsn, user=t.role_name, password=pw, dbname=t.database_name))
    await service.suspend("acme")
    try:
        await c.execute("select 1")
    except Exception as e:
        print("open", type(e), e.sqlstate, repr(str(e)))
    try:
        await psycopg.AsyncConnection.connect(conninfo.make_conninfo(pg_admin_dsn, user=t.role_name, password=pw, dbname=t.database_name))
    except Exception as e:
        print("susp", type(e), e.sqlstate, repr(str(e)))
    assert False
