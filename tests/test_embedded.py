"""The embedded server's safety promises, tried as a hostile local user would.

Only the operator (and root) can connect; a home that is not the operator's own private
folder is refused, and a symlink planted in it is never followed; the server starts from
binaries installed in a folder the server user cannot enter; a test session whose server
does not start leaves nothing under /var/tmp. The servers are real, nothing is mocked; the
tests that need a second OS user create one, and so run as root only.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from runbook.db.embedded import PACKAGE, EmbeddedServer, install_root
from runbook.errors import EmbeddedServerError
from runbook.tools.cli import main
from tests.fix_db import track

ROOT = Path(__file__).resolve().parent.parent
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: creates an OS user / runs the server as another user")

# A stdlib-only PostgreSQL client: connects, sends a startup packet for user postgres and
# reports what happened ("authenticated" when the server let it in without a password).
PROBE = r"""
import json, socket, struct, sys

def attempt(family, address):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(10)
    try:
        s.connect(address)
    except OSError as exc:
        return type(exc).__name__
    body = struct.pack("!I", 196608) + b"user\0postgres\0database\0postgres\0\0"
    s.sendall(struct.pack("!I", len(body) + 4) + body)
    head = b""
    while len(head) < 9:
        chunk = s.recv(9 - len(head))
        if not chunk:
            break
        head += chunk
    if head[:1] == b"R" and len(head) == 9 and struct.unpack("!I", head[5:9])[0] == 0:
        return "authenticated"
    return "answered " + head[:1].decode("ascii", "replace")

result = {}
if sys.argv[1]:
    result["socket"] = attempt(socket.AF_UNIX, sys.argv[1])
result["tcp"] = attempt(socket.AF_INET, ("127.0.0.1", int(sys.argv[2])))
print(json.dumps(result))
"""


def _runs_as(user: pwd.struct_passwd) -> dict[str, object]:
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": [], "cwd": "/", "env": {"PATH": "/usr/bin:/bin"}}


def _throwaway_user(prefix: str) -> Iterator[pwd.struct_passwd]:
    name = f"{prefix}{secrets.token_hex(4)}"
    subprocess.run(
        ["useradd", "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin", name],
        check=True, capture_output=True,
    )  # fmt: skip
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)


@pytest.fixture(scope="module")
def stranger() -> Iterator[pwd.struct_passwd]:
    """A throwaway OS user with no relation to the operator or the server user; deleted after."""
    yield from _throwaway_user("rbprobe")


@pytest.fixture(scope="module")
def operator() -> Iterator[pwd.struct_passwd]:
    """A throwaway OS user who is not root: an on-call engineer on a shared JupyterHub host."""
    yield from _throwaway_user("rboncall")


def _python_for(user: pwd.struct_passwd) -> str:
    for candidate in (os.path.realpath(sys.executable), "/usr/bin/python3", "/usr/local/bin/python3"):
        try:
            if subprocess.run([candidate, "-I", "-S", "-c", "pass"], capture_output=True, **_runs_as(user)).returncode == 0:  # type: ignore[call-overload]
                return candidate
        except OSError:
            continue
    pytest.skip("no Python interpreter that a second user may run")


def _probe(python: str, user: pwd.struct_passwd | None, socket_path: str, port: int) -> dict[str, str]:
    kwargs = _runs_as(user) if user is not None else {}
    done = subprocess.run([python, "-I", "-S", "-c", PROBE, socket_path, str(port)], capture_output=True, text=True, timeout=60, **kwargs)  # type: ignore[call-overload]
    assert done.returncode == 0, done.stderr
    result: dict[str, str] = json.loads(done.stdout)
    return result


@as_root
def test_a_second_local_user_cannot_connect_by_tcp_or_socket(admin_dsn: str, stranger: pwd.struct_passwd) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        listen = str(conn.execute("SHOW listen_addresses").fetchone()[0])  # type: ignore[index]
        folders = str(conn.execute("SHOW unix_socket_directories").fetchone()[0]).strip('"')  # type: ignore[index]
        port = int(conn.execute("SHOW port").fetchone()[0])  # type: ignore[index]
    socket_path = f"{folders}/.s.PGSQL.{port}" if folders else ""
    assert listen == "", "the server listens on TCP"
    python = _python_for(stranger)
    # The probe works: the operator gets in through the same socket without a password.
    assert _probe(python, None, socket_path, port)["socket"] == "authenticated"
    tried = _probe(python, stranger, socket_path, port)
    assert tried == {"socket": "PermissionError", "tcp": "ConnectionRefusedError"}, tried
    psql = shutil.which("psql", path="/usr/bin:/usr/local/bin")
    if psql:  # the same with a real libpq client, where the system has one
        for host in (folders, "127.0.0.1"):
            done = subprocess.run(
                [psql, "-X", "-w", "-h", host, "-p", str(port), "-U", "postgres", "-d", "postgres", "-c", "SELECT 1"],
                capture_output=True, text=True, timeout=60, **_runs_as(stranger),  # type: ignore[call-overload]
            )  # fmt: skip
            assert done.returncode != 0 and ("Permission denied" in done.stderr or "Connection refused" in done.stderr), done.stderr


def _as_operator(python: str, operator: pwd.struct_passwd, code: str) -> str:
    """Run ``code`` as ``operator`` with this checkout's runbook importable; its stdout."""
    site = next(p for p in sys.path if p.endswith("site-packages") and Path(p, "psycopg").is_dir())
    prelude = f"import sys; sys.path[:0] = [{str(ROOT)!r}, {site!r}]\n"
    done = subprocess.run([python, "-I", "-c", prelude + code], capture_output=True, text=True, timeout=120, **_runs_as(operator))  # type: ignore[call-overload]
    assert done.returncode == 0, done.stderr[-3000:]
    return str(done.stdout)


@as_root
def test_a_non_root_operators_server_is_closed_to_other_users(
    operator: pwd.struct_passwd, stranger: pwd.struct_passwd
) -> None:
    python = _python_for(operator)
    readable = subprocess.run([python, "-I", "-S", "-c", f"open({str(ROOT / 'runbook' / 'embedded.py')!r}).close()"], capture_output=True, **_runs_as(operator))  # type: ignore[call-overload]
    if readable.returncode != 0:
        pytest.skip("this checkout is in a folder other users cannot read (the root-run test covers it)")
    home = Path("/var/tmp") / f"litellm-runbook-test-oncall-{secrets.token_hex(4)}"
    server = f"from pathlib import Path; from runbook.db.embedded import EmbeddedServer; s = EmbeddedServer(Path({str(home)!r}))\n"
    try:
        _as_operator(python, operator, server + "s.start(); print(s.port())")
        port = int(home.joinpath("port").read_text())
        assert _snapshot(home)[:3] == (operator.pw_uid, operator.pw_gid, 0o700)
        assert _snapshot(home / "socket")[:3] == (operator.pw_uid, operator.pw_gid, 0o700)
        socket_path = str(home / "socket" / f".s.PGSQL.{port}")
        assert json.loads(_as_operator(python, operator, f"import subprocess; print(subprocess.run([sys.executable, '-I', '-S', '-c', {PROBE!r}, {socket_path!r}, '{port}'], capture_output=True, text=True).stdout)"))["socket"] == "authenticated"
        tried = _probe(_python_for(stranger), stranger, socket_path, port)
        assert tried == {"socket": "PermissionError", "tcp": "ConnectionRefusedError"}, tried
    finally:
        if home.exists():
            _as_operator(python, operator, server + "s.destroy()")
    assert not home.exists()


# -- the home folder ----------------------------------------------------------------------


@pytest.fixture
def var_tmp() -> Iterator[Callable[[], Path]]:
    """Makes fresh folders under /var/tmp (where the server user can reach them); removes
    them, and stops any server started in them, afterwards."""
    made: list[Path] = []

    def make() -> Path:
        folder = Path(tempfile.mkdtemp(prefix="litellm-runbook-test-home-", dir="/var/tmp"))
        made.append(folder)
        return folder

    yield make
    for folder in made:
        for home in [folder, *folder.iterdir()] if folder.is_dir() else []:
            if (home / "pgdata" / "postmaster.pid").exists():
                try:
                    EmbeddedServer(home).stop()
                except EmbeddedServerError:
                    pass
        shutil.rmtree(folder, ignore_errors=True)


def _snapshot(path: Path) -> tuple[int, int, int, list[str]]:
    st = os.lstat(path)
    listing = sorted(os.listdir(path)) if stat.S_ISDIR(st.st_mode) else []
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), listing


def _symlink_home(folder: Path) -> tuple[Path, Path]:
    folder.chmod(0o755)
    target = folder / "target"
    target.mkdir(mode=0o700)
    (folder / "home").symlink_to(target)
    return folder / "home", target


def _foreign_home(folder: Path) -> tuple[Path, Path]:
    folder.chmod(0o755)
    home = folder / "home"
    home.mkdir(mode=0o700)
    os.chown(home, pwd.getpwnam("nobody").pw_uid, -1)
    return home, home


def _open_home(folder: Path) -> tuple[Path, Path]:
    folder.chmod(0o755)
    home = folder / "home"
    home.mkdir()
    home.chmod(0o777)
    return home, home


def _writable_parent(folder: Path) -> tuple[Path, Path]:
    folder.chmod(0o777)  # anyone may rename the home away and put another in its place
    home = folder / "home"
    home.mkdir(mode=0o700)
    return home, home


@as_root
@pytest.mark.parametrize(
    ("make_home", "says"),
    [
        (_symlink_home, "is a symlink or not a folder"),
        (_foreign_home, "is owned by nobody"),
        (_open_home, "is mode 0777"),
        (_writable_parent, "which another user can change"),
    ],
    ids=["symlink", "owned-by-another-user", "mode-0777", "parent-writable-by-others"],
)
def test_a_home_that_is_not_the_operators_private_folder_is_refused(
    var_tmp: Callable[[], Path], make_home: Callable[[Path], tuple[Path, Path]], says: str
) -> None:
    home, watched = make_home(var_tmp())
    before = _snapshot(watched)
    server = EmbeddedServer(home)
    for action in (server.start, server.destroy):
        with pytest.raises(EmbeddedServerError) as refused:
            action()
        assert str(home) in str(refused.value) and says in str(refused.value)
        assert "mode 0700 or 0750" in str(refused.value)
        assert _snapshot(watched) == before  # nothing written, chowned, chmodded or removed


@as_root
@pytest.mark.parametrize("entry", ["server.log", "port", "pgdata", "socket"])
def test_a_symlink_planted_in_the_home_is_never_followed(var_tmp: Callable[[], Path], tmp_path: Path, entry: str) -> None:
    home = var_tmp()
    victim = tmp_path / "victim"  # stands for /etc/shadow (a file) or /etc (a folder)
    if entry in ("pgdata", "socket"):
        victim.mkdir(mode=0o755)
    else:
        victim.write_text("root:secret\n")
        victim.chmod(0o640)
    (home / entry).symlink_to(victim)
    before = _snapshot(victim), victim.read_text() if victim.is_file() else ""
    with pytest.raises(EmbeddedServerError) as refused:
        EmbeddedServer(home).start()
    assert str(home / entry) in str(refused.value) and "symlink" in str(refused.value)
    assert "root:secret" not in str(refused.value)
    assert (_snapshot(victim), victim.read_text() if victim.is_file() else "") == before
    # and its removal removes the link, not what it points to
    EmbeddedServer(home).destroy()
    assert not home.exists() and victim.exists() and _snapshot(victim) == before[0]


@as_root
def test_a_home_left_open_by_an_older_version_is_refused_and_db_destroy_removes_it(
    var_tmp: Callable[[], Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = var_tmp()
    folder.chmod(0o755)
    home = folder / "home"
    home.mkdir()
    home.chmod(0o755)  # what `mkdir(parents=True)` under umask 022 made before
    (home / "port").write_text("5432\n")
    with pytest.raises(EmbeddedServerError, match="mode 0755 .*python -m runbook db destroy removes it"):
        EmbeddedServer(home).start()
    assert sorted(os.listdir(home)) == ["port"] and stat.S_IMODE(home.stat().st_mode) == 0o755
    monkeypatch.setenv("RUNBOOK_HOME", str(home))
    assert main(["db", "destroy"]) == 0
    assert not home.exists()


# -- binaries in a folder the server user cannot enter -------------------------------------


@as_root
def test_the_server_starts_from_an_install_in_a_private_folder(var_tmp: Callable[[], Path]) -> None:
    private = Path(tempfile.mkdtemp(prefix="litellm-runbook-private-"))  # 0700, as a clone under /root
    try:
        installed = install_root()
        shutil.copytree(installed / PACKAGE / "pginstall", private / PACKAGE / "pginstall", symlinks=True)
        shutil.copytree(installed / f"{PACKAGE}.libs", private / f"{PACKAGE}.libs", symlinks=True)
        server_user = pwd.getpwnam("litellm-runbook") if _user_exists("litellm-runbook") else None
        if server_user is not None:  # the premise: the server user cannot run the installed binaries
            denied = subprocess.run(
                ["test", "-x", str(private / PACKAGE / "pginstall" / "bin" / "initdb")], **_runs_as(server_user)  # type: ignore[call-overload]
            )  # fmt: skip
            assert denied.returncode != 0
        home = var_tmp()
        server = track(EmbeddedServer(home, install=private))
        try:
            server.start()  # initdb and postgres run from the copy, as the server user
            with psycopg.connect(server.dsn(), autocommit=True) as conn:
                assert conn.execute("SELECT current_setting('data_directory')").fetchone() == (str(server.pgdata),)
            assert (home / "pginstall" / f"{PACKAGE}.libs").is_dir()
            server.stop()
            server.start()  # the copy is reused
            with psycopg.connect(server.dsn(), autocommit=True) as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
        finally:
            server.destroy()
    finally:
        shutil.rmtree(private, ignore_errors=True)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


# -- the test session's own server ----------------------------------------------------------


def test_a_session_whose_server_does_not_start_removes_its_folder(tmp_path: Path) -> None:
    # A real failure after the server started: libpq rejects the session's first connection.
    env = {**os.environ, "PGOPTIONS": "-c no_such_setting=1", "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--collect-only", "tests/test_rule.py"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode != 0 and "no_such_setting" in output, output[-3000:]
    marker = "the test session's embedded server in "
    assert marker in output, output[-3000:]
    folder = output.split(marker, 1)[1].split(" ", 1)[0]
    assert folder.startswith("/var/tmp/litellm-runbook-test-")
    assert not Path(folder).exists()
