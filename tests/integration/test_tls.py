"""TLS to fleet servers: a server registered with ``sslmode=verify-full`` and its root certificate is
reached that way by every connection the control plane makes, and a wrong certificate authority is
refused cleanly.

Each test starts its own PostgreSQL with ``ssl = on``, a certificate authority and a server certificate
(SAN ``localhost`` and ``127.0.0.1``) it generates, and a ``pg_hba.conf`` that accepts TLS connections
only. Whether a connection verified the server is not visible on the server, so the proof is an
impostor: the server's certificate is replaced by one another CA signed, and every path (tenant pools,
management pools and probes, health checks, usage collection, migrations, ``pg_dump`` from
``Fleet.dsn``) must then refuse to talk to it, and work again once the registry has the new CA.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import ipaddress
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from litestar.testing import AsyncTestClient
from psycopg import conninfo

from controlplane.app import create_app
from controlplane.errors import ServerUnavailable
from controlplane.localpg.binaries import find_bindir
from controlplane.localpg.home import DATA
from controlplane.localpg.system import service_user
from controlplane.migrations.service import TenantMigrations
from controlplane.platform import Platform
from controlplane.settings import Settings
from tests.conftest import ADMIN_TOKEN, eventually, make_settings
from tests.harness import LocalClusterHandle
from tests.integration.admin_support import assert_error, registry_snapshot
from tests.integration.auth_support import create_tenant
from tests.integration.cli_support import cli_env, refused, run_cli

Client = AsyncTestClient[Any]


class Authority:
    """A certificate authority made for the test, and the server certificates it signs."""

    def __init__(self, name: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (
            self._builder(subject, subject, self.key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.pem = self.cert.public_bytes(serialization.Encoding.PEM).decode()

    @staticmethod
    def _builder(subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
        now = dt.datetime.now(dt.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
        )

    def server_cert(self) -> tuple[bytes, bytes]:
        """(certificate PEM, key PEM) for ``localhost`` / ``127.0.0.1``."""
        key = ec.generate_private_key(ec.SECP256R1())
        san = x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        )
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
        cert = (
            self._builder(subject, self.cert.subject, key.public_key())
            .add_extension(san, critical=False)
            .sign(self.key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return cert.public_bytes(serialization.Encoding.PEM), key_pem


class TlsServer:
    """A throwaway PostgreSQL that accepts TLS connections only, with a certificate from ``authority``."""

    def __init__(self, cluster: LocalClusterHandle, authority: Authority) -> None:
        self.cluster = cluster
        home = cluster.cluster.home
        assert home is not None
        self.data = home / DATA
        self.present(authority)
        (self.data / "pg_hba.conf").write_text(
            "local all all scram-sha-256\nhostssl all all 127.0.0.1/32 scram-sha-256\n"
        )  # rewriting keeps the file's owner: no plain TCP connection is accepted any more
        with psycopg.connect(cluster.dsn, autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET ssl = on")
            conn.execute("SELECT pg_reload_conf()")
        self._wait_for_tls()

    @property
    def dsn(self) -> str:
        """The superuser DSN, without any TLS parameter."""
        return self.cluster.dsn

    def present(self, authority: Authority) -> None:
        """Serve a certificate signed by ``authority`` (from the next connection on, after a reload)."""
        cert, key = authority.server_cert()
        user = service_user()
        for name, content in (("server.crt", cert), ("server.key", key)):
            path = self.data / name
            path.write_bytes(content)
            path.chmod(0o600)
            if user is not None:
                os.chown(path, user.uid, user.gid)

    def reload(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True, sslmode="require") as conn:
            conn.execute("SELECT pg_reload_conf()")
            # Sessions made before keep their TLS session: end ours, so every next one is a new handshake.
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE 'cardvault-%'"
            )

    def _wait_for_tls(self) -> None:
        deadline = time.monotonic() + 15
        while True:
            try:
                psycopg.connect(self.dsn, sslmode="disable").close()
            except psycopg.OperationalError:
                return  # the reload is through: no plain connection any more
            assert time.monotonic() < deadline, "the server still accepts connections without TLS"
            time.sleep(0.02)

    def ssl_sessions(self) -> list[dict[str, Any]]:
        """Our sessions on the server: user, application and whether they run over TLS."""
        with psycopg.connect(self.dsn, sslmode="require") as conn:
            rows = conn.execute(
                "SELECT a.usename, a.application_name, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)"
                " WHERE a.application_name LIKE 'cardvault-%'"
            ).fetchall()
        return [{"user": r[0], "application": r[1], "ssl": r[2]} for r in rows]


@pytest.fixture
def tls_server(extra_cluster: Callable[[], LocalClusterHandle]) -> tuple[TlsServer, Authority]:
    authority = Authority("CardVault test CA")
    return TlsServer(extra_cluster(), authority), authority


def _pem_file(tmp_path: Path, authority: Authority) -> str:
    path = tmp_path / f"{hashlib.sha256(authority.pem.encode()).hexdigest()[:12]}.pem"
    path.write_text(authority.pem)
    return str(path)


async def test_a_wrong_ca_or_incomplete_tls_settings_are_refused_and_change_nothing(
    client: Client, control_dsn: str, settings: Settings, tls_server: tuple[TlsServer, Authority], tmp_path: Path
) -> None:
    server, authority = tls_server
    impostor = Authority("Impostor CA")
    before = registry_snapshot(control_dsn)

    def add(**body: Any) -> Any:
        return client.post("/admin/servers", json={"name": "secure", "dsn": server.dsn, **body})

    body = assert_error(await add(sslmode="verify-full", root_cert=impostor.pem), 400, "validation_failed")
    assert "certificate verify failed" in body["detail"]
    assert (
        "needs the root certificate"
        in assert_error(await add(sslmode="verify-full"), 400, "validation_failed")["detail"]
    )
    assert_error(
        await add(sslmode="verify-full", root_cert="-----BEGIN CERTIFICATE-----\nnope"), 400, "validation_failed"
    )
    assert_error(await add(sslmode="always"), 400, "validation_failed")
    assert registry_snapshot(control_dsn) == before

    env = cli_env(control_dsn, settings.provisioning.template_database, tmp_path / "cli")
    wrong, right = _pem_file(tmp_path, impostor), _pem_file(tmp_path, authority)
    add_args = ("servers", "add", "secure", server.dsn, "--sslmode", "verify-full", "--root-cert")
    assert "certificate verify failed" in refused(run_cli(env, *add_args, wrong), "validation_failed")["detail"]
    assert registry_snapshot(control_dsn) == before

    added = run_cli(env, *add_args, right, "--json")
    assert added.code == 0, added.stderr
    registered = added.json()
    assert registered["sslmode"] == "verify-full"
    assert registered["root_cert_sha256"] == hashlib.sha256(authority.pem.encode()).hexdigest()
    assert "sslmode" not in registered["dsn_display"]  # the registry's column is the one truth

    # Changing the settings is checked the same way: a wrong CA changes nothing.
    registered_state = registry_snapshot(control_dsn)
    assert_error(
        await client.patch("/admin/servers/secure", json={"root_cert": impostor.pem}), 400, "validation_failed"
    )
    assert_error(await client.patch("/admin/servers/secure", json={"root_cert": None}), 400, "validation_failed")
    assert registry_snapshot(control_dsn) == registered_state
    changed = run_cli(env, "servers", "update", "secure", "--sslmode", "verify-ca", "--json")
    assert changed.code == 0, changed.stderr
    assert changed.json()["sslmode"] == "verify-ca"
    assert changed.json()["root_cert_sha256"] == registered["root_cert_sha256"], "left out: unchanged"
    assert_error(await client.patch("/admin/servers/nowhere", json={"sslmode": "require"}), 404, "server_not_found")
    with psycopg.connect(control_dsn) as conn:
        audit = conn.execute(
            "SELECT outcome, details->>'sslmode' FROM platform_audit WHERE action = 'server.set_tls' ORDER BY id"
        ).fetchall()
    assert audit == [("failed", None), ("failed", None), ("succeeded", "verify-ca"), ("failed", None)]


def _pg_dump(dsn: str) -> subprocess.CompletedProcess[str]:
    """What a backup runs: ``pg_dump`` given ``Fleet.dsn`` (pointed at the tenant's database)."""
    return subprocess.run(
        [str(find_bindir() / "pg_dump"), "--schema-only", "--dbname", dsn],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def _other_paths(settings: Settings, slug: str) -> dict[str, Any]:
    """The outcome of each connection path that is not a tenant request, through a fresh platform."""
    async with Platform.open(settings, migrate=False) as platform:
        async with platform.control.connection() as conn:
            cur = await conn.execute("SELECT server_id, database_name FROM tenants WHERE slug = %s", (slug,))
            tenant = await cur.fetchone()
            assert tenant is not None
            dsn = conninfo.make_conninfo(
                await platform.fleet.dsn(conn, tenant["server_id"]), dbname=tenant["database_name"]
            )
        dump = _pg_dump(dsn)
        try:
            report = await TenantMigrations(platform).run()
            migrated = [o.ok for o in report.outcomes if o.target.slug == slug] == [True]
            migration_error = ""
        except Exception as exc:  # the template of an unreachable server fails the run
            migrated, migration_error = False, str(exc)
    return {"dump": dump, "migrated": migrated, "migration_error": migration_error, "dsn": dsn}


async def test_every_connection_to_a_verify_full_server_checks_its_certificate(
    client: Client, settings: Settings, tls_server: tuple[TlsServer, Authority]
) -> None:
    server, authority = tls_server
    added = await client.post(
        "/admin/servers",
        json={"name": "secure", "dsn": server.dsn, "sslmode": "verify-full", "root_cert": authority.pem},
    )
    assert added.status_code == 201, added.text
    assert (await client.post("/admin/servers/default/drain")).status_code == 200
    tenant = await create_tenant(client, "secure-co")
    assert tenant.body["server_name"] == "secure"
    made = await client.post(tenant.api("/manufacturers"), json={"name": "Topps"}, headers=tenant.auth)
    assert made.status_code == 201, made.text
    role = f"t_{tenant.id.hex}"
    sessions = server.ssl_sessions()
    assert {s["user"] for s in sessions} >= {role, "postgres"}, sessions  # tenant pool, management pool
    assert all(s["ssl"] for s in sessions), sessions

    health = (await client.get("/admin/tenants/secure-co/health")).json()
    assert health["ok"] is True, health
    collected = (await client.post("/admin/usage/collect?full=true")).json()
    assert collected["failed"] == 0 and collected["failed_servers"] == 0, collected
    paths = await _other_paths(settings, "secure-co")
    assert "sslmode=verify-full" in paths["dsn"] and str(settings.data_dir / "tls") in paths["dsn"]
    assert paths["dump"].returncode == 0 and "manufacturers" in paths["dump"].stdout, paths["dump"].stderr
    assert paths["migrated"], paths["migration_error"]

    # An impostor: the same address, a certificate another CA signed. Nothing talks to it.
    impostor = Authority("Impostor CA")
    server.present(impostor)
    server.reload()
    async with AsyncTestClient(app=create_app(settings)) as replica:  # no pool, nothing cached
        replica.headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
        assert_error(await replica.get(tenant.api("/manufacturers"), headers=tenant.auth), 503, "tenant_unavailable")
        body = assert_error(
            await replica.post("/admin/tenants", json={"name": "N", "slug": "new-co"}), 503, "server_unavailable"
        )
        assert "certificate verify failed" in body["detail"]
        health = (await replica.get("/admin/tenants/secure-co/health")).json()
        assert health["ok"] is False and "certificate verify failed" in health["error"], health
        collected = (await replica.post("/admin/usage/collect?full=true")).json()
        assert collected["failed_servers"] == 1, collected
        paths = await _other_paths(settings, "secure-co")
        assert paths["dump"].returncode != 0 and "certificate verify failed" in paths["dump"].stderr
        assert not paths["migrated"]

        # The operator gives the registry the server's new CA: every path works again, on every replica.
        changed = await replica.patch("/admin/servers/secure", json={"root_cert": impostor.pem})
        assert changed.status_code == 200, changed.text

        async def serves() -> bool:
            response = await replica.get(tenant.api("/manufacturers"), headers=tenant.auth)
            return response.status_code == 200

        await eventually(serves, "the tenant API over the new CA")
        assert (await client.get(tenant.api("/manufacturers"), headers=tenant.auth)).status_code == 200
        assert (await replica.get("/admin/tenants/secure-co/health")).json()["ok"] is True
        paths = await _other_paths(settings, "secure-co")
        assert paths["dump"].returncode == 0, paths["dump"].stderr
        assert paths["migrated"], paths["migration_error"]


async def test_the_control_database_url_keeps_its_tls_and_the_default_server_inherits_it(
    tls_server: tuple[TlsServer, Authority], tenant_template_name: str, tmp_path: Path
) -> None:
    server, authority = tls_server
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute("CREATE DATABASE cvcontrol")
    url = conninfo.make_conninfo(
        server.dsn, dbname="cvcontrol", sslmode="verify-full", sslrootcert=_pem_file(tmp_path, authority)
    )
    settings = dataclasses.replace(make_settings(url, tenant_template_name), data_dir=tmp_path / "data")
    async with Platform.open(settings) as platform:  # migrates the registry over the same URL
        async with platform.control.connection() as conn:
            cur = await conn.execute("SELECT name, sslmode, ssl_root_cert FROM db_servers")
            assert await cur.fetchall() == [
                {"name": "default", "sslmode": "verify-full", "ssl_root_cert": authority.pem}
            ]
        sessions = server.ssl_sessions()
        assert any(s["application"] == "cardvault-controlplane-control" for s in sessions), sessions
        assert all(s["ssl"] for s in sessions), sessions

    server.present(Authority("Impostor CA"))
    server.reload()
    with pytest.raises(ServerUnavailable, match="certificate verify failed"):
        async with Platform.open(settings):  # the registry migration's connection verifies too
            pass
