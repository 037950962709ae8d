"""A server's TLS settings: what is accepted, how a new DSN or new settings combine with the stored ones,
and the root certificate files libpq reads (the connections themselves: ``tests/integration/test_tls.py``)."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from psycopg import conninfo

from controlplane.errors import ValidationFailed
from controlplane.fleet.tls import (
    RootCertFiles,
    ServerTls,
    from_local_file,
    new_dsn,
    new_tls,
    normalise_root_cert,
    split,
)


class Authority:
    """A self-signed CA certificate (only its PEM matters here)."""

    def __init__(self, name: str) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        self.pem = cert.public_bytes(serialization.Encoding.PEM).decode()


def test_tls_settings_are_checked_before_they_are_stored() -> None:
    authority = Authority("CA")
    dsn = "host=db port=5432 user=u dbname=postgres"
    stripped, tls = split(dsn + " sslmode=require", ServerTls())
    assert tls == ServerTls(sslmode="require") and "sslmode" not in stripped
    assert split(dsn, ServerTls(sslmode="verify-full", root_cert=authority.pem))[1].root_cert == authority.pem
    assert split(dsn + " sslrootcert=system", ServerTls(sslmode="verify-full"))[1].sslmode == "verify-full"
    for bad_dsn, given, why in (
        (dsn, ServerTls(sslmode="verify-full"), "needs the root certificate"),
        (dsn, ServerTls(sslmode="verify-ca"), "needs the root certificate"),
        (dsn, ServerTls(sslmode="sometimes"), "sslmode must be one of"),
        (dsn + " sslmode=disable", ServerTls(sslmode="require"), "sslmode=disable"),
        (dsn + " sslrootcert=/etc/ssl/ca.pem", ServerTls(), "give the certificate itself"),
        (dsn + " sslrootcert=system", ServerTls(root_cert=authority.pem), "choose one"),
        (dsn, ServerTls(root_cert="hello"), "not PEM-encoded"),
        (dsn, ServerTls(root_cert=""), "bytes of PEM"),
    ):
        with pytest.raises(ValidationFailed, match=why):
            split(bad_dsn, given)
    # One set of certificates, one fingerprint, however it was laid out.
    assert normalise_root_cert("\n" + authority.pem.replace("\n", "\r\n") + "\n") == authority.pem


def test_a_new_dsn_keeps_the_servers_tls_and_new_settings_replace_what_an_old_dsn_carried(tmp_path: Path) -> None:
    authority = Authority("CA")
    stored = ServerTls(sslmode="verify-full", root_cert=authority.pem)
    dsn = "host=db port=5432 user=u password=p dbname=postgres"

    def same(got: tuple[str, ServerTls], want: tuple[str, ServerTls]) -> bool:
        return (conninfo.conninfo_to_dict(got[0]), got[1]) == (conninfo.conninfo_to_dict(want[0]), want[1])

    assert same(new_dsn(dsn, stored), (dsn, stored)), "a rotated password keeps the TLS settings"
    assert same(
        new_dsn(dsn + " sslmode=verify-ca", stored), (dsn, ServerTls(sslmode="verify-ca", root_cert=authority.pem))
    )
    # A DSN stored before TLS had columns may carry both; what is given replaces them.
    legacy = dsn + " sslmode=require sslrootcert=/etc/old-ca.pem"
    assert same(new_tls(legacy, ServerTls(), sslmode="verify-full", root_cert=authority.pem), (dsn, stored))
    assert same(new_tls(dsn, stored, sslmode="require", root_cert=None), (dsn, ServerTls(sslmode="require")))
    with pytest.raises(ValidationFailed, match="needs the root certificate"):
        new_tls(dsn, stored, root_cert=None)
    # The control database's URL names a file on this machine: the default server gets what it holds.
    path = tmp_path / "ca.pem"
    path.write_text(authority.pem)
    url, pem = from_local_file(f"{dsn} sslmode=verify-full sslrootcert={path}")
    assert conninfo.conninfo_to_dict(url) == conninfo.conninfo_to_dict(dsn + " sslmode=verify-full")
    assert pem == authority.pem
    assert from_local_file(dsn + " sslrootcert=system") == (dsn + " sslrootcert=system", None)


def test_root_certificates_become_private_files_named_by_their_hash(tmp_path: Path) -> None:
    pem = Authority("CA").pem
    files = RootCertFiles(tmp_path / "data" / "tls")
    path = Path(files.path(pem))
    assert path.parent == tmp_path / "data" / "tls" and path.name == hashlib.sha256(pem.encode()).hexdigest() + ".crt"
    assert path.read_text() == pem and path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    path.write_text("tampered")  # a file that is not what its name says is written again
    assert files.path(pem) == str(path) and path.read_text() == pem
    private = RootCertFiles(None)  # no directory: a private temporary one, gone at close
    temporary = Path(private.path(pem))
    assert temporary.read_text() == pem and temporary.parent.stat().st_mode & 0o777 == 0o700
    private.close()
    assert not temporary.parent.exists()
