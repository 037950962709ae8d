"""Where a local cluster lives and who runs it: its directory (or, when the service user cannot reach that,
a fallback directory it is symlinked to), files written as that user, and the PostgreSQL tools run as
that user. ``ClusterHome`` is the base of ``LocalCluster``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from controlplane.localpg.binaries import find_bindir
from controlplane.localpg.system import LocalClusterError, ServiceUser, service_user, subprocess_env

log = logging.getLogger("controlplane.localpg")

#: Where clusters go when the service user cannot reach the requested directory (root only).
FALLBACK_BASE = Path("/var/lib/cardvault-pg")
FALLBACK_BASE_FAST = Path("/var/tmp/cardvault-pg")

DATA = "data"
PASSWORD_FILE = "superuser.password"
STATE_FILE = "cluster.json"


class ClusterHome:
    """The directory, the service user and the tools of one local cluster (see the package docstring)."""

    root: Path
    fast: bool
    _bindir: Path | None
    _user: ServiceUser | None
    _user_resolved: bool

    # ------------------------------------------------------------------------------ directory + user

    def _service_user(self) -> ServiceUser | None:
        if not self._user_resolved:
            self._user = service_user()
            self._user_resolved = True
        return self._user

    def _existing_home(self) -> Path | None:
        if self.root.is_symlink():
            target = Path(os.path.realpath(self.root))
            return target if target.is_dir() else None
        return self.root if self.root.is_dir() else None

    @staticmethod
    def _looks_like_cluster(home: Path) -> bool:
        names = {p.name for p in home.iterdir()}
        return not names or bool(names & {STATE_FILE, PASSWORD_FILE, DATA})

    def _prepare_home(self) -> Path:
        user = self._service_user()
        if self.root.is_symlink():
            home = Path(os.path.realpath(self.root))
            home.mkdir(mode=0o700, parents=True, exist_ok=True)  # e.g. the target was cleaned away
        else:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            home = self.root
        if user is None:
            return home
        self._adopt(home, user)
        if self._user_can_reach(home, user):
            return home
        if home != self.root or any(self.root.iterdir()):
            raise LocalClusterError(
                f"user {user.name!r} (PostgreSQL refuses to run as root) cannot reach {home}; "
                "make its parent directories traversable (chmod o+x) or use another data directory"
            )
        self.root.rmdir()
        target = self._fallback_dir()
        try:
            target.mkdir(mode=0o700, exist_ok=True)
        except FileNotFoundError:  # a concurrent destroy() removed the empty base directory
            target = self._fallback_dir()
            target.mkdir(mode=0o700, exist_ok=True)
        self._adopt(target, user)
        try:
            self.root.symlink_to(target, target_is_directory=True)
        except FileExistsError:  # a concurrent call won the race
            if Path(os.path.realpath(self.root)) != target:
                raise
        log.info("%s cannot reach %s; the cluster lives in %s (symlinked)", user.name, self.root, target)
        return target

    def _fallback_dir(self) -> Path:
        base = FALLBACK_BASE_FAST if self.fast else FALLBACK_BASE
        base.mkdir(mode=0o755, parents=True, exist_ok=True)
        st = base.lstat()
        if not base.is_dir() or base.is_symlink() or st.st_uid != 0 or st.st_mode & 0o022:
            raise LocalClusterError(f"{base} must be a directory owned by root and not writable by others")
        resolved = Path(os.path.realpath(self.root.parent)) / self.root.name
        return base / hashlib.sha256(str(resolved).encode()).hexdigest()[:16]

    @staticmethod
    def _adopt(home: Path, user: ServiceUser) -> None:
        """Make ``home`` (recursively, if it is not already) owned by ``user``, mode 0700."""
        if home.stat().st_uid != user.uid:
            for dirpath, dirnames, filenames in os.walk(home):
                for name in [*dirnames, *filenames]:
                    os.chown(os.path.join(dirpath, name), user.uid, user.gid, follow_symlinks=False)
            os.chown(home, user.uid, user.gid)
        home.chmod(0o700)

    def _user_can_reach(self, home: Path, user: ServiceUser) -> bool:
        return self._run(["test", "-x", str(home), "-a", "-w", str(home)], cwd=Path("/")).returncode == 0

    def _write(self, path: Path, text: str, mode: int = 0o600) -> None:
        """Atomically write ``path`` owned by the service user."""
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
            os.chmod(tmp, mode)
            user = self._service_user()
            if user is not None:
                os.chown(tmp, user.uid, user.gid)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    # --------------------------------------------------------------------------------- subprocesses

    def _bin(self, tool: str) -> str:
        if self._bindir is None:
            self._bindir = find_bindir()
        return str(self._bindir / tool)

    def _run(self, args: Sequence[str], *, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run ``args`` as the service user (or directly), output collected through a file.

        A file rather than a pipe: the postmaster that ``pg_ctl start`` leaves behind must not hold
        our pipe open.
        """
        user = self._service_user()
        cmd = list(args)
        switch_in_child = False  # no runuser (e.g. macOS): let subprocess switch user itself
        if user is not None:
            runuser = shutil.which("runuser")
            if runuser is not None:
                cmd = [runuser, "-u", user.name, "--", *cmd]
            else:
                switch_in_child = True
        with tempfile.TemporaryFile(mode="w+") as out:
            try:
                result = subprocess.run(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=cwd,
                    env=subprocess_env(),
                    timeout=timeout,
                    check=False,
                    user=user.uid if user is not None and switch_in_child else None,
                    group=user.gid if user is not None and switch_in_child else None,
                    extra_groups=[] if switch_in_child else None,
                )
            except FileNotFoundError as exc:
                raise LocalClusterError(f"cannot run {cmd[0]}: {exc}") from exc
            except subprocess.TimeoutExpired as exc:
                raise LocalClusterError(f"{' '.join(cmd)} timed out after {timeout:.0f}s") from exc
            out.seek(0)
            output = out.read()
        return subprocess.CompletedProcess(cmd, int(result.returncode), output, "")
