"""TLS to the fleet's servers: each server's ``sslmode`` and root certificate, merged into every DSN.

Both live in the registry (``db_servers.sslmode``, ``db_servers.ssl_root_cert``), not in the encrypted
DSN: a new password (``servers set-dsn``) keeps them, and every replica verifies a server the same way.
``Fleet.dsn`` returns the server's DSN with ``sslmode`` and ``sslrootcert`` set, so whatever is built from
it (management pools, tenant pools, migrations, health checks, usage collection, spares, ``pg_dump``)
connects as the registry says. libpq reads a root certificate only from a file: :class:`RootCertFiles`
writes each one once, mode 0600, named by its SHA-256.

A DSN may carry ``sslmode`` itself (it is moved to the column) and ``sslrootcert=system`` (the
operating system's CAs, kept); a ``sslrootcert`` path is refused: a file on one machine is not on the
others, so the certificate itself is given (``--root-cert FILE``, ``root_cert``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

import msgspec
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from msgspec import UNSET, UnsetType
from psycopg import conninfo

from controlplane.errors import ConfigError, ValidationFailed
from controlplane.fleet import dsns

log = logging.getLogger(__name__)

#: libpq's ``sslmode`` values, weakest first.
SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
#: Modes that check the server's certificate against a root certificate.
VERIFYING = ("verify-ca", "verify-full")
#: ``sslrootcert`` value telling libpq (16+) to trust the operating system's certificate authorities.
SYSTEM_ROOTS = "system"
MAX_ROOT_CERT_BYTES = 256 * 1024


class ServerTls(msgspec.Struct, frozen=True, kw_only=True):
    """A server's TLS settings as the registry keeps them."""

    #: libpq ``sslmode``; None: the DSN's own (libpq's default ``prefer`` when it has none).
    sslmode: str | None = None
    #: PEM of the certificate authorities the server's certificate must chain to.
    root_cert: str | None = None


def validate_sslmode(value: str) -> str:
    if value not in SSLMODES:
        raise ValidationFailed(f"sslmode must be one of {', '.join(SSLMODES)}", sslmode=value)
    return value


def normalise_root_cert(pem: str) -> str:
    """The certificates of ``pem`` re-encoded (so one set of certificates has one fingerprint).

    ``ValidationFailed`` unless it is one or more PEM X.509 certificates.
    """
    try:
        raw = pem.encode() if isinstance(pem, str) else b""
    except UnicodeEncodeError:  # a lone surrogate from JSON
        raw = b""
    if not raw.strip() or len(raw) > MAX_ROOT_CERT_BYTES:
        raise ValidationFailed(f"the root certificate must be 1 to {MAX_ROOT_CERT_BYTES} bytes of PEM")
    try:
        certificates = x509.load_pem_x509_certificates(raw)
    except ValueError:
        raise ValidationFailed("the root certificate is not PEM-encoded X.509 (-----BEGIN CERTIFICATE-----)") from None
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certificates)


def fingerprint(pem: str) -> str:
    return hashlib.sha256(pem.encode()).hexdigest()


def without(dsn: str, *keys: str) -> tuple[str, dict[str, str]]:
    """``dsn`` without the parameters ``keys``, and their values (those it had)."""
    params = dsns.parse(dsn)
    removed = {key: params.pop(key) for key in keys if key in params}
    return (conninfo.make_conninfo("", **params) if removed else dsn), removed


def split(dsn: str, given: ServerTls) -> tuple[str, ServerTls]:
    """``dsn`` without ``sslmode``, and the TLS settings of it and ``given`` together (checked).

    An ``sslmode`` in the DSN that differs from ``given.sslmode`` is refused, as is a ``sslrootcert`` path.
    """
    dsn, removed = without(dsn, "sslmode")
    in_dsn = removed.get("sslmode")
    if in_dsn is not None and given.sslmode is not None and in_dsn != given.sslmode:
        raise ValidationFailed(f"the DSN says sslmode={in_dsn} but sslmode {given.sslmode} was given")
    tls = ServerTls(sslmode=given.sslmode or in_dsn, root_cert=given.root_cert)
    check(tls, dsns.parse(dsn).get("sslrootcert"))
    if tls.root_cert is not None:
        tls = ServerTls(sslmode=tls.sslmode, root_cert=normalise_root_cert(tls.root_cert))
    return dsn, tls


def new_dsn(dsn: str, stored: ServerTls) -> tuple[str, ServerTls]:
    """A server's new DSN and TLS settings: the stored ones, but for an ``sslmode`` the DSN gives."""
    dsn, given = without(dsn, "sslmode")
    return split(dsn, ServerTls(sslmode=given.get("sslmode") or stored.sslmode, root_cert=stored.root_cert))


def new_tls(
    dsn: str,
    stored: ServerTls,
    *,
    sslmode: str | UnsetType | None = UNSET,
    root_cert: str | UnsetType | None = UNSET,
) -> tuple[str, ServerTls]:
    """A server's DSN and new TLS settings (UNSET: as stored, None: cleared).

    What is given replaces what the DSN itself may still carry (one stored before the registry had TLS
    columns: an ``sslmode``, a ``sslrootcert`` path).
    """
    dsn, _ = without(
        dsn,
        *(() if isinstance(sslmode, UnsetType) else ("sslmode",)),
        *(() if isinstance(root_cert, UnsetType) else ("sslrootcert",)),
    )
    wanted = ServerTls(
        sslmode=stored.sslmode if isinstance(sslmode, UnsetType) else sslmode,
        root_cert=stored.root_cert if isinstance(root_cert, UnsetType) else root_cert,
    )
    return split(dsn, wanted)


def check(tls: ServerTls, sslrootcert: str | None) -> None:
    """``tls`` is complete and consistent with the DSN's own ``sslrootcert`` (None when it has none)."""
    if tls.sslmode is not None:
        validate_sslmode(tls.sslmode)
    if sslrootcert is not None and sslrootcert != SYSTEM_ROOTS:
        raise ValidationFailed(
            "the DSN names a root certificate file (sslrootcert); give the certificate itself instead "
            "(root_cert, or --root-cert FILE on the command line): every replica needs it"
        )
    if sslrootcert == SYSTEM_ROOTS and tls.root_cert is not None:
        raise ValidationFailed("the DSN says sslrootcert=system and a root certificate was given: choose one")
    if tls.sslmode in VERIFYING and tls.root_cert is None and sslrootcert != SYSTEM_ROOTS:
        raise ValidationFailed(
            f"sslmode {tls.sslmode} needs the root certificate that signed the server's certificate "
            "(root_cert, or --root-cert FILE), or sslrootcert=system in the DSN"
        )


def from_local_file(dsn: str) -> tuple[str, str | None]:
    """``dsn`` without an ``sslrootcert`` path, and the certificate that file holds.

    For the control database's own URL, read here, on the machine whose file it names. Without
    ``sslrootcert`` a verifying ``sslmode`` uses libpq's default (``PGSSLROOTCERT``, else
    ``~/.postgresql/root.crt``), read the same way.
    """
    path = dsns.parse(dsn).get("sslrootcert")
    if path == SYSTEM_ROOTS:
        return dsn, None
    if path is None:
        if dsns.parse(dsn).get("sslmode", os.environ.get("PGSSLMODE")) not in VERIFYING:
            return dsn, None
        path = os.environ.get("PGSSLROOTCERT") or str(Path("~/.postgresql/root.crt").expanduser())
    try:
        pem = Path(path).expanduser().read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the root certificate {path!r} of the database URL: {exc}") from None
    return without(dsn, "sslrootcert")[0], pem


def with_tls(dsn: str, sslmode: str | None, root_cert_file: str | None) -> str:
    """``dsn`` with the registry's ``sslmode`` and root certificate file (what libpq is given)."""
    extra = {"sslmode": sslmode, "sslrootcert": root_cert_file}
    return conninfo.make_conninfo(dsn, **{k: v for k, v in extra.items() if v is not None})


class RootCertFiles:
    """Root certificates as files for libpq: ``<directory>/<sha256>.crt``, mode 0600.

    A file is (re)written when it is missing or does not hold exactly the certificate its name says.
    ``directory`` (the data directory's ``tls/``) is created 0700; when it cannot be used, or is None, a
    private temporary directory is made instead and removed by :meth:`close`.
    """

    def __init__(self, directory: Path | None) -> None:
        self._wanted = Path(os.path.abspath(directory)) if directory is not None else None
        self._directory: Path | None = None
        self._temporary = False

    def path(self, pem: str) -> str:
        directory = self._dir()
        target = directory / f"{fingerprint(pem)}.crt"
        with contextlib.suppress(OSError, UnicodeDecodeError):
            if target.read_text() == pem:
                return str(target)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".cert-", suffix=".tmp")  # mode 0600
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(pem)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return str(target)

    def _dir(self) -> Path:
        if self._directory is not None:
            return self._directory
        if self._wanted is not None:
            try:
                self._wanted.mkdir(mode=0o700, parents=True, exist_ok=True)
                info = self._wanted.stat()
                if info.st_uid != os.geteuid():
                    raise PermissionError(f"{self._wanted} belongs to another user")
                if info.st_mode & 0o077:
                    self._wanted.chmod(0o700)
                self._directory = self._wanted
                return self._directory
            except OSError as exc:
                log.warning("root certificates go to a temporary directory: %s is not usable (%s)", self._wanted, exc)
        self._directory = Path(tempfile.mkdtemp(prefix="cardvault-tls-"))
        self._temporary = True
        return self._directory

    def close(self) -> None:
        if self._temporary and self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory, self._temporary = None, False
