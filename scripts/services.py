"""Find or start the Redis and PostgreSQL servers that voicealert needs.

Run with the project's virtualenv (``scripts/test`` and ``scripts/demo`` do, after
``scripts/bootstrap``)::

    .venv/bin/python scripts/services.py env    # "export REDIS_URL=... DATABASE_URL=..." lines
    .venv/bin/python scripts/services.py stop   # stops the throwaway servers

Each URL is ``$REDIS_URL`` / ``$DATABASE_URL`` when set (the server must answer), else the
local default port when a server there answers (127.0.0.1:6379; 127.0.0.1:5432 as user
postgres), else a throwaway server started from the binaries on PATH (installed with apt-get
when running as root), keeping its files under ``$VOICEALERT_STATE_DIR`` (default
``<repo>/.state``) and reused while it answers. ``VOICEALERT_SERVICES_FORCE_THROWAWAY=1`` skips
the default ports (a test knob for the throwaway path). A failure prints one line on stderr and
exits 1, before anything is printed on stdout; success says on stderr what was chosen.

The e2e outage tests own servers they can stop and start through :class:`ThrowawayPostgres`
and :class:`ThrowawayRedis`. Their methods block: call them off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import glob
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import redis

__all__ = ["ServiceError", "ThrowawayPostgres", "ThrowawayRedis", "free_port", "main"]

REPO_ROOT = Path(__file__).resolve().parent.parent
STATE_DIR_ENV = "VOICEALERT_STATE_DIR"
FORCE_THROWAWAY_ENV = "VOICEALERT_SERVICES_FORCE_THROWAWAY"
LOCAL_HOST = "127.0.0.1"
LOCAL_REDIS_URL = f"redis://{LOCAL_HOST}:6379/0"
DATABASE_NAME = "voicealert"
# The superuser of a throwaway cluster, and the account it runs as when we are root
# (PostgreSQL refuses to run as root).
PG_USER = "postgres"
LOCAL_POSTGRES_URL = f"postgresql://{PG_USER}@{LOCAL_HOST}:5432/{DATABASE_NAME}"
PG_BIN_GLOBS = ("/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin")
# TCP on 127.0.0.1 only (no unix socket: no path length limit, no clash with a system server),
# and durability traded for speed: a throwaway server holds nothing worth an fsync.
PG_SERVER_OPTIONS = (
    f"-c listen_addresses={LOCAL_HOST} -c unix_socket_directories='' -c fsync=off "
    "-c synchronous_commit=off -c full_page_writes=off -c shared_buffers=16MB"
)


class ServiceError(Exception):
    """A failure explained in one line (the CLI prints it, never a traceback)."""


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _redacted(url: str) -> str:
    """The URL without its user and password, for messages."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


# --------------------------------------------------------------------------- probes


def redis_problem(url: str, timeout: float = 2.0) -> str | None:
    """None when the Redis at url answers PING, else why not (one line)."""
    try:
        client = redis.Redis.from_url(
            url, socket_connect_timeout=timeout, socket_timeout=timeout
        )
        try:
            client.ping()
        finally:
            client.close()
    except redis.BusyLoadingError:
        return None  # it answers; it is still loading its dataset
    except Exception as exc:  # a probe reports what went wrong, whatever the URL holds
        return _one_line(str(exc)) or type(exc).__name__
    return None


def postgres_problem(url: str, timeout: float = 3.0) -> str | None:
    """None when the PostgreSQL server at url accepts a session, or lacks only the database
    (``voicealert migrate`` creates it), else why not (one line)."""

    async def connect() -> None:
        conn = await asyncpg.connect(url, timeout=timeout)
        await conn.close()

    try:
        asyncio.run(connect())
    except asyncpg.InvalidCatalogNameError:
        return None
    except TimeoutError:
        return f"no answer within {timeout:g}s"
    except Exception as exc:  # a probe reports what went wrong, whatever the URL holds
        return _one_line(str(exc)) or type(exc).__name__
    return None


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((LOCAL_HOST, 0))
        return int(sock.getsockname()[1])


def _port_taken(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind
        try:
            sock.bind((LOCAL_HOST, port))
        except OSError:
            return True
    return False


def _read_int(path: Path, line: int = 0) -> int | None:
    try:
        return int(path.read_text(encoding="utf-8").splitlines()[line])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int | None, *programs: str) -> bool:
    """True if pid runs one of programs: a pidfile outlives its server and its pid may be
    reused; a zombie is dead (some container inits do not reap)."""
    if pid is None or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return not Path("/proc/self").exists()  # gone, unless there is no /proc to ask
    name, _, state = text.partition("(")[2].rpartition(")")
    return state.split()[:1] != ["Z"] and name in {program[:15] for program in programs}


def _wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _which(program: str) -> str | None:
    """The program on PATH or in the sbin directories (root's tools live there)."""
    path = os.environ.get("PATH", os.defpath)
    return shutil.which(program, path=f"{path}:/usr/local/sbin:/usr/sbin:/sbin")


def _run(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    name = Path(argv[0]).name
    try:
        return subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
            cwd="/", check=False,
        )
    except subprocess.TimeoutExpired:
        raise ServiceError(f"{name} timed out after {timeout:.0f}s") from None
    except OSError as exc:
        raise ServiceError(f"could not run {name}: {exc}") from None


def _last_line(text: str) -> str:
    return next((_one_line(line) for line in reversed(text.splitlines()) if line.strip()), "")


def _said(result: subprocess.CompletedProcess[str]) -> str:
    """What a failed program said last (its exit status if nothing)."""
    return _last_line(f"{result.stdout}\n{result.stderr}") or f"exit status {result.returncode}"


def _log_tail(log_file: Path) -> str:
    with contextlib.suppress(OSError):
        return _last_line(log_file.read_text(encoding="utf-8", errors="replace"))
    return ""


def _apt_install(package: str, missing: str) -> None:
    """apt-get install package when we are root and have apt-get, else ServiceError(missing)."""
    apt_get = _which("apt-get")
    if os.geteuid() != 0 or apt_get is None:
        raise ServiceError(missing)
    if sys.stderr.isatty():  # a minute of silence deserves a word; logs get one line
        print(f"services: installing {package} with apt-get", file=sys.stderr, flush=True)
    os.environ["DEBIAN_FRONTEND"] = "noninteractive"
    for command in ([apt_get, "update", "-qq"], [apt_get, "install", "-y", "-qq", package]):
        result = _run(command, timeout=900)
        if result.returncode != 0:
            raise ServiceError(f"'{shlex.join(command)}' failed: {_said(result)}")


# --------------------------------------------------------------------------- PostgreSQL


def find_postgres_bin_dir(major: str | None = None) -> Path | None:
    """The directory holding initdb, pg_ctl and postgres: version major's when given and
    installed, else the one on PATH, else the newest installed."""
    candidates = [Path(f"/usr/lib/postgresql/{major}/bin")] if major else []
    on_path = shutil.which("initdb")
    if on_path:
        candidates += [Path(on_path).parent, Path(on_path).resolve().parent]
    installed = [Path(found) for pattern in PG_BIN_GLOBS for found in glob.glob(pattern)]
    candidates += sorted(
        installed, key=lambda p: [int(n) for n in re.findall(r"\d+", str(p))], reverse=True
    )
    for candidate in candidates:
        if all(os.access(candidate / name, os.X_OK) for name in ("initdb", "pg_ctl", "postgres")):
            return candidate
    return None


def _postgres_account() -> pwd.struct_passwd:
    """The system user a throwaway cluster runs as when we are root (created if missing)."""
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(PG_USER)
    useradd = _which("useradd") or "useradd"
    result = _run([useradd, "--system", "--user-group", "--no-create-home", PG_USER], 60)
    if result.returncode != 0:
        raise ServiceError(f"could not create the system user {PG_USER}: {_said(result)}")
    return pwd.getpwnam(PG_USER)


def _open_path_for_postgres(directory: Path) -> None:
    """Let the postgres user traverse the directories we own in the temp dir on the way to
    directory (mkdtemp and pytest make them 0700); elsewhere initdb says what blocks it."""
    temp_root = Path(tempfile.gettempdir()).resolve()
    for path in [*directory.resolve().parents, directory.resolve()]:
        info = path.stat()
        if temp_root in path.parents and info.st_uid == os.geteuid():
            os.chmod(path, stat.S_IMODE(info.st_mode) | stat.S_IXOTH)


def _postmaster_port(data_dir: Path) -> int | None:
    """The port of the live postmaster of data_dir, from its postmaster.pid."""
    lock = data_dir / "postmaster.pid"
    return _read_int(lock, 3) if _alive(_read_int(lock), "postgres", "postmaster") else None


class ThrowawayPostgres:
    """A disposable PostgreSQL cluster in data_dir: trust auth, superuser ``postgres``,
    listening on 127.0.0.1:port only (kept across stop/start), fsync off, its log in
    ``data_dir/postgres.log``. As root, the cluster belongs to and runs as the system user
    ``postgres``."""

    def __init__(
        self, data_dir: Path, port: int | None = None, *, bin_dir: Path | None = None
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.port: int = port if port is not None else free_port()
        self.bin_dir = bin_dir
        self.log_file = self.data_dir / "postgres.log"

    @property
    def url(self) -> str:
        """``postgresql://postgres@127.0.0.1:{port}/postgres``"""
        return self.url_for("postgres")

    def url_for(self, database: str) -> str:
        return f"postgresql://{PG_USER}@{LOCAL_HOST}:{self.port}/{database}"

    def resolve_bin_dir(self) -> Path | None:
        """The server binaries to use (those of the cluster's version when installed), or None
        when PostgreSQL is not installed."""
        if self.bin_dir is None:
            with contextlib.suppress(OSError):
                version = (self.data_dir / "PG_VERSION").read_text(encoding="utf-8").strip()
                self.bin_dir = find_postgres_bin_dir(version)
            self.bin_dir = self.bin_dir or find_postgres_bin_dir()
        return self.bin_dir

    def _pg(self, program: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        bin_dir = self.resolve_bin_dir()
        if bin_dir is None:
            raise ServiceError(
                "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found on PATH "
                "or under /usr/lib/postgresql/*/bin"
            )
        argv = [str(bin_dir / program), *args]
        if os.geteuid() == 0:
            _postgres_account()
            argv = [_which("runuser") or "runuser", "-u", PG_USER, "--", *argv]
        return _run(argv, timeout)

    def _failure(self, result: subprocess.CompletedProcess[str]) -> str:
        log = _log_tail(self.log_file)
        return f"{_said(result)}; log {self.log_file}: {log}" if log else _said(result)

    def init(self) -> None:
        """initdb into data_dir unless it already holds a cluster."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            account = _postgres_account()
            _open_path_for_postgres(self.data_dir.parent)
            os.chown(self.data_dir, account.pw_uid, account.pw_gid)
        os.chmod(self.data_dir, 0o700)
        if (self.data_dir / "PG_VERSION").is_file():
            return
        result = self._pg(
            "initdb", "-D", str(self.data_dir), "-U", PG_USER, "--auth=trust", "-E", "UTF8",
            "--locale=C", "--no-sync", timeout=180,
        )
        if result.returncode != 0:
            raise ServiceError(f"initdb failed: {self._failure(result)}")

    def running_port(self) -> int | None:
        """The port the live server of this data dir listens on, if it runs."""
        return _postmaster_port(self.data_dir)

    def is_running(self) -> bool:
        """True while this cluster's postmaster process is alive."""
        return self.running_port() is not None

    def is_ready(self) -> bool:
        """True if the server on self.port accepts sessions right now."""
        return postgres_problem(self.url, timeout=2.0) is None

    def start(self, timeout: float = 30) -> None:
        """Start the server (initdb first if needed) and return once it accepts sessions on
        127.0.0.1:port; a no-op when it already runs there."""
        running = self.running_port()
        if running is not None:
            if running != self.port:
                raise ServiceError(f"PostgreSQL in {self.data_dir} already runs on port {running}")
            if not _wait_until(self.is_ready, timeout):
                raise ServiceError(f"PostgreSQL in {self.data_dir} runs but does not answer")
            return
        self.init()
        if _port_taken(self.port):
            raise ServiceError(f"cannot start PostgreSQL: 127.0.0.1:{self.port} is in use")
        # Its server is gone; PostgreSQL would refuse to start if that pid is still a zombie.
        (self.data_dir / "postmaster.pid").unlink(missing_ok=True)
        result = self._pg(
            "pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file),
            "-o", f"-p {self.port} {PG_SERVER_OPTIONS}", "-w", "-t", str(round(timeout)), "start",
            timeout=timeout + 15,
        )
        if result.returncode != 0:
            raise ServiceError(f"PostgreSQL did not start on port {self.port}: "
                               f"{self._failure(result)}")

    def stop(self, mode: str = "fast", timeout: float = 60) -> None:
        """``pg_ctl stop -m mode`` (smart, fast or immediate) and wait until the server is
        gone; a no-op when it does not run."""
        if mode not in ("smart", "fast", "immediate"):
            raise ValueError(f"mode must be smart, fast or immediate, not {mode!r}")
        if not self.is_running():
            return
        result = self._pg(
            "pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "-t", str(round(timeout)),
            "stop", timeout=timeout + 15,
        )
        if result.returncode != 0 and self.is_running():
            raise ServiceError(f"pg_ctl stop failed: {self._failure(result)}")


# --------------------------------------------------------------------------- Redis


class ThrowawayRedis:
    """A disposable ``redis-server`` on 127.0.0.1:port (kept across stop/start), without
    persistence; data_dir holds ``redis.pid``, ``redis.port`` and ``redis.log``."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.port: int = port if port is not None else free_port()
        self.pid_file = self.data_dir / "redis.pid"
        self.port_file = self.data_dir / "redis.port"
        self.log_file = self.data_dir / "redis.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def from_state(cls, data_dir: Path) -> ThrowawayRedis:
        """An instance on the port recorded in data_dir (a free port if none is)."""
        return cls(data_dir, _read_int(Path(data_dir).absolute() / "redis.port"))

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:{port}/0``"""
        return f"redis://{LOCAL_HOST}:{self.port}/0"

    def pid(self) -> int | None:
        """The pid of the live redis-server recorded in the pidfile, if any."""
        pid = _read_int(self.pid_file)
        return pid if _alive(pid, "redis-server") else None

    def is_running(self) -> bool:
        """True while the redis-server recorded in the pidfile is alive."""
        return self.pid() is not None

    def is_ready(self) -> bool:
        """True if the server on self.port answers PING."""
        return redis_problem(self.url, timeout=1.0) is None

    def start(self, timeout: float = 30) -> None:
        """Start redis-server and return once it answers PING; a no-op when it already runs."""
        if self.is_running():
            if _read_int(self.port_file) != self.port:
                raise ServiceError(f"the Redis of {self.data_dir} runs on another port")
            if not _wait_until(self.is_ready, timeout):
                raise ServiceError(f"the Redis of {self.data_dir} runs but does not answer")
            return
        binary = _which("redis-server")
        if binary is None:
            raise ServiceError("redis-server not found on PATH")
        if _port_taken(self.port):
            raise ServiceError(f"cannot start Redis: 127.0.0.1:{self.port} is in use")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [
            binary, "--port", str(self.port), "--bind", LOCAL_HOST, "--save", "",
            "--appendonly", "no", "--dir", str(self.data_dir), "--logfile", str(self.log_file),
        ]
        try:
            with open(self.log_file, "ab") as log:  # for what it says before opening its log
                proc = subprocess.Popen(
                    command, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                    cwd=self.data_dir, start_new_session=True,
                )
        except OSError as exc:
            raise ServiceError(f"could not run redis-server: {exc}") from None
        self._proc = proc
        self.pid_file.write_text(f"{proc.pid}\n", encoding="utf-8")
        self.port_file.write_text(f"{self.port}\n", encoding="utf-8")
        deadline = time.monotonic() + timeout
        while not self.is_ready():
            if proc.poll() is not None or time.monotonic() >= deadline:
                self.stop()
                raise ServiceError(f"redis-server did not start on port {self.port}: "
                                   f"{_log_tail(self.log_file) or 'no log'}")
            time.sleep(0.05)

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM (SIGKILL after timeout) and wait until the server is gone."""
        pid = self.pid()
        if pid is not None:
            for signum, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signum)
                if _wait_until(lambda: not _alive(pid, "redis-server"), wait):
                    break
        if self._proc is not None:
            self._proc.poll()  # reap our child
            self._proc = None
        self.pid_file.unlink(missing_ok=True)


# --------------------------------------------------------------------------- choosing


def state_dir() -> Path:
    """``$VOICEALERT_STATE_DIR`` or ``<repo>/.state``."""
    raw = os.environ.get(STATE_DIR_ENV, "").strip()
    return (Path(raw).expanduser() if raw else REPO_ROOT / ".state").absolute()


def _choose(
    variable: str,
    probe: Callable[[str], str | None],
    local_url: str,
    throwaway: Callable[[], str],
    notes: list[str],
) -> str:
    """$variable when set (it must answer), else local_url when it answers, else throwaway()."""
    url = os.environ.get(variable, "").strip()
    if url:
        problem = probe(url)
        if problem is not None:
            raise ServiceError(f"cannot use {variable} {_redacted(url)}: {problem}")
        notes.append(f"using {variable} ({_redacted(url)})")
        return url
    if os.environ.get(FORCE_THROWAWAY_ENV, "").strip().lower() in ("", "0", "false", "no"):
        problem = probe(local_url)
        if problem is None:
            notes.append(f"using {_redacted(local_url)}")
            return local_url
        notes.append(f"nothing usable at {_redacted(local_url)} ({problem})")
    return throwaway()


def _throwaway_redis(state: Path, notes: list[str]) -> str:
    server = ThrowawayRedis.from_state(state / "redis")
    if server.is_running() and _wait_until(server.is_ready, 5):
        notes.append(f"reusing the throwaway Redis at {LOCAL_HOST}:{server.port}")
        return server.url
    server.stop()
    if _port_taken(server.port):
        server = ThrowawayRedis(state / "redis")
    if _which("redis-server") is None:
        _apt_install("redis-server", "no Redis: REDIS_URL is unset, nothing answers on "
                     f"{LOCAL_HOST}:6379 and redis-server is not on PATH "
                     "(install Redis or set REDIS_URL)")
    server.start()
    notes.append(f"started a throwaway Redis at {LOCAL_HOST}:{server.port} ({server.data_dir})")
    return server.url


def _throwaway_postgres(state: Path, notes: list[str]) -> str:
    data_dir, port_file = state / "postgres", state / "postgres.port"
    running = _postmaster_port(data_dir)
    if running is not None:
        server = ThrowawayPostgres(data_dir, running)
        if _wait_until(server.is_ready, 10):
            notes.append(f"reusing the throwaway PostgreSQL at {LOCAL_HOST}:{running}")
            return server.url_for(DATABASE_NAME)
        server.stop("immediate")
    stored = _read_int(port_file)
    server = ThrowawayPostgres(data_dir, stored if stored and not _port_taken(stored) else None)
    if server.resolve_bin_dir() is None:
        _apt_install("postgresql", "no PostgreSQL: DATABASE_URL is unset, nothing answers on "
                     f"{LOCAL_HOST}:5432 and initdb/pg_ctl/postgres are not on PATH or under "
                     "/usr/lib/postgresql/*/bin (install PostgreSQL or set DATABASE_URL)")
    server.start()
    port_file.write_text(f"{server.port}\n", encoding="utf-8")
    notes.append(f"started a throwaway PostgreSQL at {LOCAL_HOST}:{server.port} ({data_dir})")
    return server.url_for(DATABASE_NAME)


# --------------------------------------------------------------------------- CLI


@contextlib.contextmanager
def _locked_state() -> Iterator[Path]:
    """The state dir, locked so that concurrent runs never start two servers."""
    state = state_dir()
    state.mkdir(parents=True, exist_ok=True)
    ignore = state / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# created by scripts/services.py\n*\n", encoding="utf-8")
    with open(state / "services.lock", "a", encoding="utf-8") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        yield state


def cmd_env() -> int:
    notes: list[str] = []
    with _locked_state() as state:
        redis_url = _choose("REDIS_URL", redis_problem, LOCAL_REDIS_URL,
                            lambda: _throwaway_redis(state, notes), notes)
        database_url = _choose("DATABASE_URL", postgres_problem, LOCAL_POSTGRES_URL,
                               lambda: _throwaway_postgres(state, notes), notes)
    # Only now, both being known: a failure prints its one line and nothing else.
    for note in notes:
        print(f"services: {_one_line(note)}", file=sys.stderr)
    print(f"export REDIS_URL={shlex.quote(redis_url)}")
    print(f"export DATABASE_URL={shlex.quote(database_url)}")
    return 0


def cmd_stop() -> int:
    if not state_dir().is_dir():
        print("services: no throwaway servers", file=sys.stderr)
        return 0
    with _locked_state() as state:
        redis_server = ThrowawayRedis.from_state(state / "redis")
        said = f"stopped the throwaway Redis on port {redis_server.port}"
        print(f"services: {said if redis_server.is_running() else 'no throwaway Redis'}",
              file=sys.stderr)
        redis_server.stop()
        port = _postmaster_port(state / "postgres")
        if port is not None:
            ThrowawayPostgres(state / "postgres", port).stop()
        said = f"stopped the throwaway PostgreSQL on port {port}"
        print(f"services: {'no throwaway PostgreSQL' if port is None else said}", file=sys.stderr)
    return 0


USAGE = "usage: .venv/bin/python scripts/services.py {env|stop}"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    commands: dict[str, Callable[[], int]] = {"env": cmd_env, "stop": cmd_stop}
    if args in (["-h"], ["--help"]):
        print(f"{USAGE}\n  env   print export lines of REDIS_URL and DATABASE_URL for eval"
              "\n  stop  stop the throwaway servers that env started")
        return 0
    if len(args) != 1 or args[0] not in commands:
        print(f"services: {USAGE}", file=sys.stderr)
        return 2
    try:
        return commands[args[0]]()
    except KeyboardInterrupt:
        print("services: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # never a traceback for someone following the README
        message = str(exc) if isinstance(exc, ServiceError) else f"{type(exc).__name__}: {exc}"
        print(f"services: error: {_one_line(message)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
