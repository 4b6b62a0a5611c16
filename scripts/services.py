#!/usr/bin/env python3
"""Find or start the Redis and PostgreSQL servers that voicealert needs.

Usage::

    eval "$(python3 scripts/services.py env)"   # exports REDIS_URL and DATABASE_URL
    python3 scripts/services.py stop             # stops throwaway servers started here

How each URL is chosen:

* Redis: ``$REDIS_URL`` if set (checked with a hand-written RESP ``PING``;
  ``rediss://`` URLs are trusted as-is), else a Redis answering on
  127.0.0.1:6379, else a throwaway ``redis-server`` on a free port.
* PostgreSQL: ``$DATABASE_URL`` if set (checked with a TCP connect), else a
  PostgreSQL answering on 127.0.0.1:5432, else a throwaway cluster
  (``initdb`` + ``pg_ctl``, trust auth, fsync off).

Throwaway servers keep their files in ``$VOICEALERT_STATE_DIR`` (default
``<repo>/.state``) and are reused while they are alive and answering.  Setting
``VOICEALERT_SERVICES_FORCE_THROWAWAY=1`` skips the probe of the default local
ports (a test knob for the throwaway path).  As root, missing server binaries
are installed with apt-get when it is available.

Only the standard library is used: this runs before the project's virtualenv
exists.  Tests can import :class:`ThrowawayPostgres`, :class:`ThrowawayRedis`
and :func:`free_port` from ``scripts.services``.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import grp
import math
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from urllib.parse import SplitResult, parse_qs, unquote, urlsplit

__all__ = [
    "ServiceError",
    "ThrowawayPostgres",
    "ThrowawayRedis",
    "find_postgres_bin_dir",
    "free_port",
    "main",
    "pg_ping",
    "redis_ping",
    "state_dir",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
STATE_DIR_ENV = "VOICEALERT_STATE_DIR"
FORCE_THROWAWAY_ENV = "VOICEALERT_SERVICES_FORCE_THROWAWAY"
DATABASE_NAME = "voicealert"
LOCAL_HOST = "127.0.0.1"
DEFAULT_REDIS_PORT = 6379
DEFAULT_PG_PORT = 5432
PG_SUPERUSER = "postgres"
PG_SYSTEM_USER = "postgres"
PG_BINARIES = ("initdb", "pg_ctl", "postgres")
PG_BIN_GLOBS = ("/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin", "/usr/local/pgsql/bin")
_SBIN_PATH = "/usr/local/sbin:/usr/sbin:/sbin"
_UNIX_SOCKET_PATH_MAX = 107  # sun_path is 108 bytes including the trailing NUL
_PG_SSL_REQUEST = struct.pack("!ii", 8, 80877103)
_PG_PROTOCOL_3 = 196608

Address = tuple[str, int] | str  # (host, port) for TCP, a path for a unix socket


class ServiceError(Exception):
    """A failure that can be explained in one line (the CLI prints no traceback)."""


def _say(message: str) -> None:
    """One diagnostic line on stderr (stdout is reserved for ``export`` lines)."""
    print(f"services: {_one_line(message)}", file=sys.stderr, flush=True)


def _one_line(text: str) -> str:
    return " ".join(text.split())


# --------------------------------------------------------------------------- #
# small helpers
# --------------------------------------------------------------------------- #


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing is listening on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCAL_HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_is_free(port: int) -> bool:
    """True if a server could bind 127.0.0.1:port (SO_REUSEADDR, as servers do)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOCAL_HOST, port))
        except OSError:
            return False
    return True


def state_dir() -> Path:
    """``$VOICEALERT_STATE_DIR`` or ``<repo>/.state`` (absolute, not created)."""
    raw = os.environ.get(STATE_DIR_ENV, "").strip()
    path = Path(raw).expanduser() if raw else REPO_ROOT / ".state"
    return path.absolute()


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def _read_int(path: Path) -> int | None:
    text = _read_text(path)
    if text is None:
        return None
    try:
        value = int(text.strip().splitlines()[0])
    except (ValueError, IndexError):
        return None
    return value if value > 0 else None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _tail(path: Path, lines: int = 1) -> str:
    """The last non-blank line(s) of a log file, joined into one line."""
    text = _read_text(path)
    if not text:
        return ""
    kept = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(kept[-lines:])


def _pid_alive(pid: int) -> bool:
    """True if pid exists and is not a zombie."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat_text = _read_text(Path(f"/proc/{pid}/stat"))
    if stat_text is None:
        return True
    fields = stat_text.rpartition(")")[2].split()
    return not (fields and fields[0] == "Z")


def _pid_is(pid: int, *names: str) -> bool:
    """True if pid is alive and (where /proc tells) runs a program called one of
    names (guards against a recycled pid in a stale pidfile)."""
    if not _pid_alive(pid):
        return False
    comm = _read_text(Path(f"/proc/{pid}/comm"))
    return comm is None or comm.strip() in {name[:15] for name in names}


def _wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def _which(name: str, *, sbin: bool = False) -> str | None:
    path = os.environ.get("PATH", os.defpath)
    if sbin:
        path = f"{path}{os.pathsep}{_SBIN_PATH}"
    return shutil.which(name, path=path)


def _is_root() -> bool:
    return os.geteuid() == 0


# --------------------------------------------------------------------------- #
# wire-level probes
# --------------------------------------------------------------------------- #


def _connect(address: Address, timeout: float) -> socket.socket:
    if isinstance(address, str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(address)
        except BaseException:
            sock.close()
            raise
        return sock
    sock = socket.create_connection(address, timeout=timeout)
    sock.settimeout(timeout)
    return sock


def _describe(address: Address) -> str:
    if isinstance(address, str):
        return address
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def tcp_open(host: str, port: int, timeout: float = 1.0) -> bool:
    """True if something accepts TCP connections on host:port."""
    return _accepts((host, port), timeout)


def _accepts(address: Address, timeout: float) -> bool:
    try:
        with _connect(address, timeout):
            return True
    except OSError:
        return False


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks: list[bytes] = []
    remaining = size
    while remaining > 0:
        chunk = sock.recv(remaining)
        if not chunk:
            raise ConnectionError("connection closed")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def redis_ping(address: Address, timeout: float = 1.0) -> str | None:
    """Send ``PING`` in RESP; return the reply line (``"+PONG"``, ``"-NOAUTH ..."``)
    or None when nothing Redis-like answered."""
    try:
        with _connect(address, timeout) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            buffer = b""
            while b"\r\n" not in buffer and len(buffer) < 4096:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                buffer += chunk
    except OSError:
        return None
    line, sep, _ = buffer.partition(b"\r\n")
    if not sep or line[:1] not in (b"+", b"-"):
        return None
    return line.decode("utf-8", errors="replace")


def _pg_ssl_probe(address: Address, timeout: float = 1.0) -> bool:
    """True if a PostgreSQL server answers an SSLRequest (with 'S' or 'N')."""
    try:
        with _connect(address, timeout) as sock:
            sock.sendall(_PG_SSL_REQUEST)
            return sock.recv(1) in (b"S", b"N")
    except OSError:
        return False


def _pg_error_fields(body: bytes) -> dict[str, str]:
    fields: dict[str, str] = {}
    for item in body.split(b"\0"):
        if item:
            fields[item[:1].decode("ascii", "replace")] = item[1:].decode("utf-8", "replace")
    return fields


def pg_ping(
    address: Address,
    user: str = PG_SUPERUSER,
    database: str = "postgres",
    timeout: float = 2.0,
) -> str | None:
    """Open a protocol-3 session (no TLS) and report how the server answers.

    Returns ``"ready"`` (session established, e.g. trust auth), ``"auth"`` (the
    server asks for a password), ``"starting"`` (SQLSTATE 57P03: starting up,
    shutting down or in recovery), ``"error <SQLSTATE>: <message>"`` for any
    other refusal, or None when no PostgreSQL server answered at all.
    """
    params = b"".join(
        key + b"\0" + value.encode() + b"\0"
        for key, value in (
            (b"user", user),
            (b"database", database),
            (b"application_name", "voicealert-services"),
        )
    )
    body = struct.pack("!i", _PG_PROTOCOL_3) + params + b"\0"
    try:
        with _connect(address, timeout) as sock:
            sock.sendall(struct.pack("!i", len(body) + 4) + body)
            while True:
                header = _recv_exact(sock, 5)
                kind = header[:1]
                (length,) = struct.unpack("!i", header[1:])
                if length < 4 or length > 1 << 20:
                    return None
                payload = _recv_exact(sock, length - 4)
                if kind == b"R":
                    (code,) = struct.unpack("!i", payload[:4])
                    if code != 0:
                        return "auth"
                elif kind == b"E":
                    fields = _pg_error_fields(payload)
                    sqlstate = fields.get("C", "?")
                    if sqlstate == "57P03":
                        return "starting"
                    return f"error {sqlstate}: {fields.get('M', '')}"
                elif kind == b"Z":
                    with contextlib.suppress(OSError):
                        sock.sendall(b"X\0\0\0\x04")  # Terminate
                    return "ready"
                elif kind not in (b"S", b"K", b"N", b"v"):
                    return None
    except (OSError, struct.error):
        return None


# --------------------------------------------------------------------------- #
# installing / locating binaries
# --------------------------------------------------------------------------- #

_apt_updated = False


def _apt_install(package: str) -> bool:
    """apt-get install package when root with apt-get; False if not possible."""
    global _apt_updated
    apt_get = _which("apt-get", sbin=True)
    if not _is_root() or apt_get is None:
        return False
    _say(f"installing {package} with apt-get (this can take a minute)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    commands = [[apt_get, "install", "-y", "-qq", package]]
    if not _apt_updated:
        commands.insert(0, [apt_get, "update", "-qq"])
    for command in commands:
        try:
            result = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=env,
                timeout=900,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ServiceError(f"'{shlex.join(command)}' failed: {exc}") from None
        if result.returncode != 0:
            lines = [line for line in result.stdout.splitlines() if line.strip()]
            detail = lines[-1] if lines else f"exit status {result.returncode}"
            raise ServiceError(f"'{shlex.join(command)}' failed: {detail}")
        if command[1] == "update":
            _apt_updated = True
    return True


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", str(path)))


_major_cache: dict[Path, str | None] = {}


def _binaries_major(bin_dir: Path) -> str | None:
    """Major version ("15", "9.6") of the ``postgres`` binary in bin_dir."""
    if bin_dir not in _major_cache:
        major: str | None = None
        try:
            out = subprocess.run(
                [str(bin_dir / "postgres"), "--version"],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=15,
                check=False,
            ).stdout
        except (OSError, subprocess.TimeoutExpired):
            out = ""
        match = re.search(r"(\d+)(?:\.(\d+))?", out.partition(")")[2] or out)
        if match:
            first = int(match.group(1))
            major = str(first) if first >= 10 else f"{first}.{match.group(2) or 0}"
        _major_cache[bin_dir] = major
    return _major_cache[bin_dir]


def find_postgres_bin_dir(prefer_major: str | None = None) -> Path | None:
    """A directory holding initdb, pg_ctl and postgres.

    Looks on PATH first, then under /usr/lib/postgresql/*/bin (and the RHEL /
    source-install layouts), highest version first.  With prefer_major, a
    directory whose binaries have that major version wins.
    """
    candidates: list[Path] = []
    on_path = _which("initdb")
    if on_path:
        candidates += [Path(on_path).parent, Path(on_path).resolve().parent]
    candidates += sorted(
        (Path(found) for pattern in PG_BIN_GLOBS for found in glob.glob(pattern)),
        key=_version_key,
        reverse=True,
    )
    usable: list[Path] = []
    for candidate in candidates:
        if candidate not in usable and all(
            os.access(candidate / name, os.X_OK) and (candidate / name).is_file()
            for name in PG_BINARIES
        ):
            usable.append(candidate)
    if prefer_major is not None:
        for candidate in usable:
            if _binaries_major(candidate) == prefer_major:
                return candidate
    return usable[0] if usable else None


# --------------------------------------------------------------------------- #
# running PostgreSQL programs as the 'postgres' user when we are root
# --------------------------------------------------------------------------- #


def _postgres_account() -> pwd.struct_passwd:
    """The unprivileged system user PostgreSQL runs as when we are root."""
    try:
        return pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        pass
    useradd = _which("useradd", sbin=True)
    if useradd is None:
        raise ServiceError(
            "running as root, PostgreSQL needs an unprivileged 'postgres' user, "
            "and useradd is not available to create one"
        )
    command = [
        useradd,
        "--system",
        "--user-group",
        "--no-create-home",
        "--home-dir",
        "/nonexistent",
        "--shell",
        "/bin/sh",
        PG_SYSTEM_USER,
    ]
    try:
        result = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ServiceError(f"could not create the 'postgres' user: {exc}") from None
    if result.returncode != 0:
        detail = _one_line(result.stderr) or f"exit status {result.returncode}"
        raise ServiceError(f"could not create the 'postgres' user: {detail}")
    _say("created system user 'postgres' to run PostgreSQL (it refuses to run as root)")
    return pwd.getpwnam(PG_SYSTEM_USER)


def _as_postgres_user(argv: list[str]) -> list[str]:
    """Wrap argv so it runs as the 'postgres' user when we are root."""
    if not _is_root():
        return argv
    _postgres_account()
    runuser = _which("runuser", sbin=True)
    if runuser:
        return [runuser, "-u", PG_SYSTEM_USER, "--", *argv]
    su = _which("su", sbin=True)
    if su:
        return [su, PG_SYSTEM_USER, "-s", "/bin/sh", "-c", shlex.join(argv)]
    raise ServiceError(
        "running as root, but neither runuser nor su is available to run "
        "PostgreSQL as the 'postgres' user"
    )


def _ensure_reachable(directory: Path, account: pwd.struct_passwd) -> None:
    """Make sure account can traverse every directory down to directory.

    Directories we own inside the system temp dir (e.g. pytest's 0700
    /tmp/pytest-of-root/...) get search-only permission (o+x) added; anything
    else that blocks the way is an error.
    """
    gids = {account.pw_gid} | {
        group.gr_gid for group in grp.getgrall() if account.pw_name in group.gr_mem
    }
    temp_root = Path(tempfile.gettempdir()).resolve()
    target = directory.resolve()
    for path in [*reversed(target.parents), target]:
        info = path.stat()
        if info.st_uid == account.pw_uid:
            allowed = info.st_mode & stat.S_IXUSR
        elif info.st_gid in gids:
            allowed = info.st_mode & stat.S_IXGRP
        else:
            allowed = info.st_mode & stat.S_IXOTH
        if allowed:
            continue
        if temp_root in path.parents and info.st_uid == os.geteuid():
            os.chmod(path, stat.S_IMODE(info.st_mode) | stat.S_IXOTH)
            continue
        raise ServiceError(
            f"PostgreSQL must run as user '{account.pw_name}', which cannot enter "
            f"{path}; put the data directory somewhere it can reach "
            f"(e.g. {STATE_DIR_ENV}=/tmp/voicealert-state)"
        )


def _postmaster_info(data_dir: Path) -> tuple[int, int] | None:
    """(pid, port) of the live postmaster owning data_dir, from postmaster.pid."""
    text = _read_text(data_dir / "postmaster.pid")
    if not text:
        return None
    lines = text.splitlines()
    try:
        pid = int(lines[0])
        port = int(lines[3])
    except (ValueError, IndexError):
        return None
    if not _pid_is(pid, "postgres", "postmaster"):
        return None
    return pid, port


# --------------------------------------------------------------------------- #
# throwaway servers
# --------------------------------------------------------------------------- #


class ThrowawayPostgres:
    """A disposable PostgreSQL cluster: trust auth, superuser ``postgres``,
    listening on 127.0.0.1:port (the same port across stop/start), fsync off.

    The unix socket (when the path is short enough) and ``postgres.log`` live in
    data_dir.  When running as root the cluster belongs to, and the server runs
    as, the system user ``postgres`` (created with useradd if missing).
    """

    def __init__(
        self, data_dir: Path, port: int | None = None, *, bin_dir: Path | None = None
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.port: int = port if port is not None else free_port()
        self.bin_dir = bin_dir
        self.log_file = self.data_dir / "postgres.log"
        socket_path = f"{self.data_dir}/.s.PGSQL.{self.port}"
        self.socket_dir: Path | None = (
            self.data_dir if len(socket_path) <= _UNIX_SOCKET_PATH_MAX else None
        )

    def __repr__(self) -> str:
        return f"ThrowawayPostgres(data_dir={str(self.data_dir)!r}, port={self.port})"

    @property
    def url(self) -> str:
        """``postgresql://postgres@127.0.0.1:{port}/postgres``"""
        return self.url_for("postgres")

    def url_for(self, database: str) -> str:
        return f"postgresql://{PG_SUPERUSER}@{LOCAL_HOST}:{self.port}/{database}"

    # -- binaries / helpers ------------------------------------------------ #

    def _data_major(self) -> str | None:
        text = _read_text(self.data_dir / "PG_VERSION")
        return text.strip() if text else None

    def resolve_bin_dir(self) -> Path | None:
        """The binaries directory to use (None if PostgreSQL is not installed)."""
        if self.bin_dir is None:
            self.bin_dir = find_postgres_bin_dir(self._data_major())
        return self.bin_dir

    def _bin(self, name: str) -> str:
        bin_dir = self.resolve_bin_dir()
        if bin_dir is None:
            raise ServiceError(
                "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found "
                "on PATH or under /usr/lib/postgresql/*/bin"
            )
        return str(bin_dir / name)

    def _run(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        command = _as_postgres_user(argv)
        name = Path(argv[0]).name
        try:
            return subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                cwd="/",
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise ServiceError(f"{name} timed out after {timeout:.0f}s") from None
        except OSError as exc:
            raise ServiceError(f"could not run {name}: {exc}") from None

    def _failure(self, result: subprocess.CompletedProcess[str]) -> str:
        output = [
            line.strip()
            for line in (result.stderr + "\n" + result.stdout).splitlines()
            if line.strip()
        ]
        parts = [output[-1] if output else f"exit status {result.returncode}"]
        log_tail = _tail(self.log_file, 2)
        if log_tail:
            parts.append(f"log {self.log_file}: {log_tail}")
        return "; ".join(parts)

    def _prepare_dirs(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if _is_root():
            account = _postgres_account()
            _ensure_reachable(self.data_dir.parent, account)
            info = self.data_dir.stat()
            if info.st_uid != account.pw_uid:
                os.chown(self.data_dir, account.pw_uid, account.pw_gid)
        os.chmod(self.data_dir, 0o700)

    # -- lifecycle ----------------------------------------------------------- #

    def is_initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").is_file()

    def init(self) -> None:
        """initdb into data_dir unless it already holds a cluster."""
        if self.is_initialized():
            data_major = self._data_major()
            bin_dir = self.resolve_bin_dir()
            binaries_major = _binaries_major(bin_dir) if bin_dir else None
            if bin_dir and binaries_major and data_major != binaries_major:
                raise ServiceError(
                    f"{self.data_dir} holds a PostgreSQL {data_major} cluster but the "
                    f"server binaries in {bin_dir} are version {binaries_major}; "
                    "delete that directory to start afresh"
                )
            return
        if self.data_dir.is_dir() and any(self.data_dir.iterdir()):
            raise ServiceError(f"{self.data_dir} is not empty and holds no PostgreSQL cluster")
        initdb = self._bin("initdb")
        self._prepare_dirs()
        result = self._run(
            [
                initdb,
                "-D",
                str(self.data_dir),
                "-U",
                PG_SUPERUSER,
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
            timeout=180,
        )
        if result.returncode != 0:
            raise ServiceError(f"initdb failed: {self._failure(result)}")

    def _server_options(self) -> list[str]:
        options = ["-p", str(self.port)]
        if self.socket_dir is not None:
            options += ["-k", str(self.socket_dir)]
        else:
            options += ["-c", "unix_socket_directories="]
        settings = {
            "listen_addresses": LOCAL_HOST,
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "shared_buffers": "16MB",
            "max_wal_size": "256MB",
            "checkpoint_timeout": "30min",
        }
        for key, value in settings.items():
            options += ["-c", f"{key}={value}"]
        return options

    def running_port(self) -> int | None:
        """The port the live server of this data dir listens on, if running."""
        info = _postmaster_info(self.data_dir)
        return info[1] if info else None

    def is_running(self) -> bool:
        """True while this cluster's postmaster process is alive."""
        return _postmaster_info(self.data_dir) is not None

    def is_ready(self) -> bool:
        """True if the server on self.port accepts sessions right now."""
        status = pg_ping((LOCAL_HOST, self.port), timeout=2.0)
        return status is not None and status != "starting"

    def _remove_stale_lock_files(self) -> None:
        """Drop postmaster.pid / socket lock files left by a killed server.

        PostgreSQL removes stale lock files itself, except when the old pid is
        still a zombie (an init that does not reap, as in some containers):
        kill(pid, 0) succeeds there and the new postmaster refuses to start.
        """
        lock_files = [self.data_dir / "postmaster.pid"]
        if self.socket_dir is not None:
            lock_files.append(self.socket_dir / f".s.PGSQL.{self.port}.lock")
        for lock_file in lock_files:
            pid = _read_int(lock_file)
            if pid is not None and not _pid_alive(pid):
                _unlink(lock_file)

    def start(self, timeout: float = 30) -> None:
        """Start the server (initdb first if needed); return once it accepts
        connections on 127.0.0.1:port.  No-op if it is already running there."""
        running = self.running_port()
        if running is not None:
            if running != self.port:
                raise ServiceError(
                    f"the PostgreSQL cluster in {self.data_dir} is already running "
                    f"on port {running}, not {self.port}"
                )
            if not _wait_until(self.is_ready, timeout):
                raise ServiceError(
                    f"PostgreSQL in {self.data_dir} is running but not answering "
                    f"on port {self.port}"
                )
            return
        self.init()
        self._prepare_dirs()
        self._remove_stale_lock_files()
        if tcp_open(LOCAL_HOST, self.port, timeout=0.5):
            raise ServiceError(f"cannot start PostgreSQL: 127.0.0.1:{self.port} is already in use")
        deadline = time.monotonic() + timeout
        command = [
            self._bin("pg_ctl"),
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_file),
            "-o",
            shlex.join(self._server_options()),
            "-w",
            "-t",
            str(max(1, math.ceil(timeout))),
            "start",
        ]
        result = self._run(command, timeout=timeout + 15)
        if result.returncode != 0:
            raise ServiceError(
                f"PostgreSQL did not start on port {self.port}: {self._failure(result)}"
            )
        if not _wait_until(self.is_ready, max(1.0, deadline - time.monotonic())):
            raise ServiceError(
                f"PostgreSQL started but does not answer on 127.0.0.1:{self.port} "
                f"(log: {self.log_file})"
            )

    def stop(self, mode: str = "fast", timeout: float = 60) -> None:
        """``pg_ctl stop -m mode`` and wait until the server is gone.
        No-op if it is not running."""
        signals = {
            "smart": signal.SIGTERM,
            "fast": signal.SIGINT,
            "immediate": signal.SIGQUIT,
        }
        if mode not in signals:
            raise ValueError(f"mode must be one of {', '.join(signals)}, not {mode!r}")
        info = _postmaster_info(self.data_dir)
        if info is None:
            return
        if self.resolve_bin_dir() is None:
            # Binaries gone (uninstalled?): do what pg_ctl does, by hand.
            with contextlib.suppress(ProcessLookupError):
                os.kill(info[0], signals[mode])
            if not _wait_until(lambda: not self.is_running(), timeout):
                raise ServiceError(f"PostgreSQL (pid {info[0]}) did not stop within {timeout:.0f}s")
            return
        command = [
            self._bin("pg_ctl"),
            "-D",
            str(self.data_dir),
            "-m",
            mode,
            "-w",
            "-t",
            str(max(1, math.ceil(timeout))),
            "stop",
        ]
        result = self._run(command, timeout=timeout + 15)
        if result.returncode != 0 and self.is_running():
            raise ServiceError(f"pg_ctl stop failed: {self._failure(result)}")


class ThrowawayRedis:
    """A disposable ``redis-server`` on 127.0.0.1:port (no persistence).

    data_dir holds ``redis.pid``, ``redis.port`` and ``redis.log``; the port is
    fixed per instance so stop/start keeps the URL valid.
    """

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.port: int = port if port is not None else free_port()
        self.pid_file = self.data_dir / "redis.pid"
        self.port_file = self.data_dir / "redis.port"
        self.log_file = self.data_dir / "redis.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"ThrowawayRedis(data_dir={str(self.data_dir)!r}, port={self.port})"

    @classmethod
    def from_state(cls, data_dir: Path) -> ThrowawayRedis:
        """An instance on the port recorded in data_dir (a new free port if none)."""
        return cls(data_dir, _read_int(Path(data_dir).absolute() / "redis.port"))

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:{port}/0``"""
        return f"redis://{LOCAL_HOST}:{self.port}/0"

    def pid(self) -> int | None:
        """pid of the live redis-server recorded in the pidfile, if any."""
        pid = _read_int(self.pid_file)
        if pid is None or not _pid_is(pid, "redis-server"):
            return None
        return pid

    def is_running(self) -> bool:
        """True while the redis-server process recorded in the pidfile is alive."""
        return self.pid() is not None

    def is_ready(self) -> bool:
        """True if the server on self.port answers PING with PONG."""
        return redis_ping((LOCAL_HOST, self.port)) == "+PONG"

    def start(self, timeout: float = 30) -> None:
        """Start redis-server detached; return once it answers PING.
        No-op if it is already running (on this port)."""
        pid = self.pid()
        if pid is not None:
            recorded = _read_int(self.port_file)
            if recorded is not None and recorded != self.port:
                raise ServiceError(
                    f"the throwaway Redis in {self.data_dir} (pid {pid}) is already "
                    f"running on port {recorded}, not {self.port}"
                )
            if not _wait_until(self.is_ready, timeout):
                raise ServiceError(
                    f"the throwaway Redis (pid {pid}) is running but does not answer "
                    f"on 127.0.0.1:{self.port}"
                )
            return
        binary = _which("redis-server")
        if binary is None:
            raise ServiceError("redis-server not found on PATH")
        if tcp_open(LOCAL_HOST, self.port, timeout=0.5):
            raise ServiceError(f"cannot start Redis: 127.0.0.1:{self.port} is already in use")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            LOCAL_HOST,
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            str(self.data_dir),
            "--logfile",
            str(self.log_file),
        ]
        try:
            with open(self.log_file, "ab") as log:
                proc = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    cwd=self.data_dir,
                    start_new_session=True,
                )
        except OSError as exc:
            raise ServiceError(f"could not run redis-server: {exc}") from None
        self._proc = proc
        _write_atomic(self.pid_file, f"{proc.pid}\n")
        _write_atomic(self.port_file, f"{self.port}\n")
        deadline = time.monotonic() + timeout
        while not self.is_ready():
            code = proc.poll()
            if code is not None:
                self._proc = None
                _unlink(self.pid_file)
                raise ServiceError(
                    f"redis-server exited with status {code} while starting: "
                    f"{_tail(self.log_file, 2) or 'no log output'}"
                )
            if time.monotonic() >= deadline:
                self.stop()
                raise ServiceError(
                    f"redis-server did not answer on 127.0.0.1:{self.port} within "
                    f"{timeout:.0f}s (log: {self.log_file})"
                )
            time.sleep(0.05)

    def _wait_gone(self, pid: int, timeout: float) -> bool:
        proc = self._proc
        if proc is not None and proc.pid == pid:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                return False
            return True
        return _wait_until(lambda: not _pid_alive(pid), timeout)

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM (SIGKILL after timeout) and wait until it is gone."""
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            if not self._wait_gone(pid, timeout):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                self._wait_gone(pid, 5)
        elif self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(5)
        self._proc = None
        _unlink(self.pid_file)


# --------------------------------------------------------------------------- #
# choosing the URLs
# --------------------------------------------------------------------------- #


def _redacted(parts: SplitResult) -> str:
    host = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{host}{parts.path}"


def _check_redis_url(url: str) -> None:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "rediss":
        _say(f"using REDIS_URL {_redacted(parts)} (TLS: not probed)")
        return
    address: Address
    if scheme == "unix":
        address = unquote(parts.path)
    elif scheme == "redis":
        try:
            port = parts.port or DEFAULT_REDIS_PORT
        except ValueError:
            raise ServiceError("REDIS_URL has an invalid port") from None
        address = (parts.hostname or "localhost", port)
    else:
        raise ServiceError(
            "REDIS_URL must start with redis://, rediss:// or unix:// "
            f"(got {scheme or 'no scheme'})"
        )
    where = _describe(address)
    reply = redis_ping(address, timeout=3.0)
    if reply is None:
        raise ServiceError(f"REDIS_URL is set but no Redis answers PING at {where}")
    if reply == "+PONG":
        _say(f"using REDIS_URL (Redis at {where})")
    elif reply.startswith("-NOAUTH") and parts.password:
        _say(f"using REDIS_URL (Redis at {where} wants AUTH; password not checked)")
    elif reply.startswith("-NOAUTH"):
        raise ServiceError(f"Redis at {where} requires a password but REDIS_URL contains none")
    elif reply.startswith("-LOADING"):
        _say(f"using REDIS_URL (Redis at {where} is still loading its dataset)")
    else:
        raise ServiceError(f"Redis at {where} answered PING with {reply[:100]!r}")


def _database_url_addresses(url: str) -> list[Address]:
    """Where a libpq-style URL points: (host, port) pairs or unix socket paths."""
    parts = urlsplit(url)
    if not parts.scheme.lower().startswith("postgres"):
        raise ServiceError(
            f"DATABASE_URL must be a postgresql:// URL (got {parts.scheme or 'none'})"
        )
    query = parse_qs(parts.query)
    try:
        default_port = int(query.get("port", [str(DEFAULT_PG_PORT)])[0])
    except ValueError:
        raise ServiceError("DATABASE_URL has an invalid port") from None
    netloc = parts.netloc.rpartition("@")[2]
    entries: list[tuple[str, str]] = []
    if "host" in query:
        entries = [(host, "") for host in query["host"][0].split(",")]
    elif netloc:
        for item in netloc.split(","):
            if item.startswith("["):
                host, _, rest = item[1:].partition("]")
                port_text = rest[1:] if rest.startswith(":") else ""
            else:
                host, _, port_text = item.partition(":")
            entries.append((unquote(host), port_text))
    addresses: list[Address] = []
    for host, port_text in entries or [("", "")]:
        try:
            port = int(port_text) if port_text else default_port
        except ValueError:
            raise ServiceError("DATABASE_URL has an invalid port") from None
        if host.startswith("/"):
            addresses.append(f"{host.rstrip('/')}/.s.PGSQL.{port}")
        elif host:
            addresses.append((host, port))
        else:  # libpq default: the local unix socket, then localhost
            addresses += [
                f"/var/run/postgresql/.s.PGSQL.{port}",
                f"/tmp/.s.PGSQL.{port}",  # noqa: S108 - libpq's other default socket dir
                ("localhost", port),
            ]
    return addresses


def _check_database_url(url: str) -> None:
    addresses = _database_url_addresses(url)
    for address in addresses:
        if _accepts(address, timeout=3.0):
            _say(f"using DATABASE_URL (PostgreSQL at {_describe(address)})")
            return
    where = ", ".join(_describe(address) for address in addresses)
    raise ServiceError(f"DATABASE_URL is set but nothing accepts connections at {where}")


def _force_throwaway() -> bool:
    return os.environ.get(FORCE_THROWAWAY_ENV, "").strip().lower() not in (
        "",
        "0",
        "false",
        "no",
    )


def _resolve_redis(state: Path) -> str:
    url = os.environ.get("REDIS_URL", "").strip()
    if url:
        _check_redis_url(url)
        return url
    if not _force_throwaway():
        reply = redis_ping((LOCAL_HOST, DEFAULT_REDIS_PORT))
        if reply == "+PONG":
            _say(f"using local Redis at {LOCAL_HOST}:{DEFAULT_REDIS_PORT}")
            return f"redis://{LOCAL_HOST}:{DEFAULT_REDIS_PORT}/0"
        if reply is not None:
            _say(
                f"{LOCAL_HOST}:{DEFAULT_REDIS_PORT} answered PING with {reply[:60]!r}; "
                "using a throwaway Redis instead"
            )
    return _throwaway_redis(state)


def _throwaway_redis(state: Path) -> str:
    data_dir = state / "redis"
    server = ThrowawayRedis.from_state(data_dir)
    pid = server.pid()
    if pid is not None:
        if _wait_until(server.is_ready, 5):
            _say(f"reusing throwaway Redis at {LOCAL_HOST}:{server.port} (pid {pid})")
            return server.url
        _say(f"throwaway Redis (pid {pid}) is not answering; restarting it")
        server.stop()
    if not _port_is_free(server.port):
        server = ThrowawayRedis(data_dir)
    if _which("redis-server") is None and not _apt_install("redis-server"):
        raise ServiceError(
            "no Redis: REDIS_URL is unset, nothing answers on 127.0.0.1:6379 and "
            "redis-server is not on PATH (install Redis or set REDIS_URL)"
        )
    if _which("redis-server") is None:
        raise ServiceError("redis-server is still not on PATH after apt-get install")
    server.start()
    _say(
        f"started throwaway Redis at {LOCAL_HOST}:{server.port} "
        f"(pid {server.pid()}, files in {data_dir})"
    )
    return server.url


def _resolve_postgres(state: Path) -> str:
    url = os.environ.get("DATABASE_URL", "").strip()
    if url:
        _check_database_url(url)
        return url
    if not _force_throwaway():
        local = (LOCAL_HOST, DEFAULT_PG_PORT)
        if _pg_ssl_probe(local):
            status = pg_ping(local)
            note = ""
            if status == "auth":
                note = " (it asks user postgres for a password: set DATABASE_URL)"
            elif status and status.startswith("error") and "3D000" not in status:
                note = f" (warning: {status})"
            _say(f"using local PostgreSQL at {_describe(local)}{note}")
            return f"postgresql://{PG_SUPERUSER}@{LOCAL_HOST}:{DEFAULT_PG_PORT}/{DATABASE_NAME}"
        if tcp_open(*local):
            _say(
                f"{_describe(local)} accepts connections but is not PostgreSQL; "
                "using a throwaway PostgreSQL instead"
            )
    return _throwaway_postgres(state)


def _throwaway_postgres(state: Path) -> str:
    data_dir = state / "postgres"
    port_file = state / "postgres.port"
    info = _postmaster_info(data_dir)
    if info is not None:
        pid, port = info
        server = ThrowawayPostgres(data_dir, port)
        if _wait_until(server.is_ready, 10):
            _say(f"reusing throwaway PostgreSQL at {LOCAL_HOST}:{port} (pid {pid})")
            return server.url_for(DATABASE_NAME)
        _say(f"throwaway PostgreSQL (pid {pid}) is not answering; restarting it")
        server.stop("immediate")
    stored = _read_int(port_file)
    server = ThrowawayPostgres(
        data_dir, stored if stored is not None and _port_is_free(stored) else None
    )
    if server.resolve_bin_dir() is None:
        if not _apt_install("postgresql"):
            raise ServiceError(
                "no PostgreSQL: DATABASE_URL is unset, nothing answers on "
                "127.0.0.1:5432 and initdb/pg_ctl/postgres are not on PATH or under "
                "/usr/lib/postgresql/*/bin (install PostgreSQL or set DATABASE_URL)"
            )
        if server.resolve_bin_dir() is None:
            raise ServiceError("PostgreSQL server binaries still not found after apt-get install")
    server.init()
    server.start()
    _write_atomic(port_file, f"{server.port}\n")
    started = _postmaster_info(data_dir)
    _say(
        f"started throwaway PostgreSQL at {LOCAL_HOST}:{server.port} "
        f"(pid {started[0] if started else '?'}, data in {data_dir})"
    )
    return server.url_for(DATABASE_NAME)


# --------------------------------------------------------------------------- #
# CLI
# --------------------------------------------------------------------------- #


def _prepare_state_dir(state: Path) -> None:
    state.mkdir(parents=True, exist_ok=True)
    ignore = state / ".gitignore"
    if not ignore.exists():
        with contextlib.suppress(OSError):
            ignore.write_text("# created by scripts/services.py\n*\n", encoding="utf-8")


@contextlib.contextmanager
def _locked(state: Path) -> Iterator[None]:
    """Serialise concurrent invocations so two of them never start two servers."""
    with open(state / "services.lock", "a", encoding="utf-8") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def cmd_env() -> int:
    state = state_dir()
    _prepare_state_dir(state)
    with _locked(state):
        redis_url = _resolve_redis(state)
        database_url = _resolve_postgres(state)
    # Printed only once both are known, so a failed `eval "$(...)"` exports nothing.
    print(f"export REDIS_URL={shlex.quote(redis_url)}")
    print(f"export DATABASE_URL={shlex.quote(database_url)}")
    return 0


def cmd_stop() -> int:
    state = state_dir()
    if not state.is_dir():
        _say(f"nothing to stop (no state dir {state})")
        return 0
    with _locked(state):
        redis = ThrowawayRedis.from_state(state / "redis")
        pid = redis.pid()
        if pid is not None:
            redis.stop()
            _say(f"stopped throwaway Redis (pid {pid}, port {redis.port})")
        else:
            _unlink(redis.pid_file)
            _say("no throwaway Redis running")
        data_dir = state / "postgres"
        info = _postmaster_info(data_dir)
        if info is not None:
            ThrowawayPostgres(data_dir, info[1]).stop()
            _say(f"stopped throwaway PostgreSQL (pid {info[0]}, port {info[1]})")
        else:
            _say("no throwaway PostgreSQL running")
    return 0


USAGE = "usage: python3 scripts/services.py {env|stop}"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args in (["-h"], ["--help"], ["help"]):
        print(USAGE)
        print('  env   print "export REDIS_URL=... DATABASE_URL=..." lines for eval')
        print("  stop  stop the throwaway servers started by env")
        return 0
    commands: dict[str, Callable[[], int]] = {"env": cmd_env, "stop": cmd_stop}
    if len(args) != 1 or args[0] not in commands:
        _say(f"error: {USAGE}")
        return 1
    try:
        return commands[args[0]]()
    except ServiceError as exc:
        _say(f"error: {exc}")
    except KeyboardInterrupt:
        _say("interrupted")
        return 130
    except Exception as exc:  # never show a traceback to someone running the README
        _say(f"error: unexpected {type(exc).__name__}: {exc}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
