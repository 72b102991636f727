"""Start NVIDIA Triton Inference Server locally: the `tritonserver` bundled in nvidia-pytriton.

That wheel ships a real server (python backend only) that serves any model repository.
Its python backend runs each model in a stub process that embeds Python: the stub built
for this interpreter's version is copied next to the backend (a private copy of the
backend folder, so site-packages is never written), and this environment's `bin/` goes
first on PATH so the stub finds this environment's packages (numpy, torch, the project).
The server listens on 127.0.0.1 only unless told otherwise.

Secured (serving/access.py, serving/audit.py): gRPC over TLS (`Security.tls_cert`/`tls_key`,
mutual with `tls_client_ca`: Triton's own SSL options), API keys by role checked by the models
(the keys file reaches them through TBPS_KEYS_FILE; Triton forwards `tbps-*` headers to them),
an admin key guarding model control and the other admin protocols (Triton's restricted
protocols), and the audit trail's folder (TBPS_AUDIT_DIR; its weaker sync mode, TBPS_AUDIT_SYNC_MS,
set from `Security.audit_sync_ms` or taken from the environment). Triton's HTTP endpoint has no
TLS of its own: it always listens on 127.0.0.1 (for a reverse proxy that terminates TLS), with the
same keys. A server on any other address than loopback without TLS and keys is refused unless
`insecure`.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from serving.access import (ADMIN_HEADER, ADMIN_PROTOCOLS, AUDIT_ENV, AUDIT_SYNC_ENV, HEADER_PATTERN, KEYS_ENV,
                            is_loopback, read_keys)
from serving.audit import sync_ms_from

READY_TIMEOUT_S = 180.0
PR_SET_PDEATHSIG = 1  # <sys/prctl.h>


class ServerError(OSError):
    """The server could not be started or did not become ready: the message says why."""


def bundled_server() -> tuple[Path, Path]:
    """(tritonserver binary, its bundled libraries folder) from the nvidia-pytriton wheel."""
    try:
        import pytriton
    except ImportError:
        raise ServerError("no tritonserver: install the serving extra (pip install -e '.[serving]'), "
                          "or run the repository in NVIDIA's Triton container") from None
    site = Path(pytriton.__file__).resolve().parent.parent
    binary = site / "pytriton" / "tritonserver" / "bin" / "tritonserver"
    if not binary.is_file():
        raise ServerError(f"nvidia-pytriton is installed but has no server binary at {binary}")
    return binary, site / "nvidia_pytriton.libs"


def _backends(binary: Path, workdir: Path) -> Path:
    """A private copy of the bundled backends with the python stub for this interpreter."""
    root = binary.parent.parent
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise ServerError(f"the bundled python backend has no stub for Python {version} ({stub})")
    backends = workdir / "backends"
    shutil.copytree(root / "backends", backends)
    shutil.copy2(stub, backends / "python" / stub.name)
    return backends


def _dies_with_parent():
    """What the server's child runs before exec so that it gets SIGTERM when this process dies,
    even by SIGKILL (a killed test run or demo would leave it running): Linux's
    PR_SET_PDEATHSIG. It fires when the forking *thread* ends, so only the main thread asks."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    prctl, parent = ctypes.CDLL(None, use_errno=True).prctl, os.getpid()

    def child() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # it died before the prctl
            os.kill(os.getpid(), signal.SIGTERM)
    return child


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """n distinct free ports: all are bound at once (the OS may hand a port it just freed out
    again, so asking one at a time can give gRPC and metrics the same one)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in sockets:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in sockets]


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]


@dataclass(frozen=True)
class Security:
    """What protects a server: TLS files (PEM), the keys file, the admin key, the audit folder."""
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None  # mutual TLS: clients need a certificate signed by this CA
    keys_file: str | None = None
    admin_key: str | None = None
    audit_dir: str | None = None
    audit_sync_ms: float | None = None  # the audit trail's weaker mode; None: as $TBPS_AUDIT_SYNC_MS says

    def sync_ms(self) -> float:
        return sync_ms_from(os.environ.get(AUDIT_SYNC_ENV) if self.audit_sync_ms is None else str(self.audit_sync_ms))

    def check(self, host: str, insecure: bool) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ServerError("TLS needs both a certificate and its private key (--tls-cert and --tls-key)")
        if self.tls_client_ca and not self.tls_cert:
            raise ServerError("a client CA (mutual TLS) needs the server's own --tls-cert and --tls-key")
        for name in ("tls_cert", "tls_key", "tls_client_ca", "keys_file"):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                raise ServerError(f"{name.replace('_', '-')}: no such file {path}")
        if self.keys_file:
            read_keys(self.keys_file)  # a bad file is refused before the server starts
        if self.audit_dir:
            try:
                self.sync_ms()
            except ValueError as e:
                raise ServerError(str(e)) from None
        if not is_loopback(host) and not insecure and not (self.tls_cert and self.keys_file):
            missing = " and ".join(what for what, given in (("TLS (--tls-cert, --tls-key)", self.tls_cert),
                                                            ("keys (--keys)", self.keys_file)) if not given)
            raise ServerError(f"refusing to listen on {host} without {missing}: anyone who reaches the port "
                              f"could search, ingest and erase; add them, or --insecure to do it anyway")


class TritonServer:
    """A running local server: `with TritonServer(repo) as server: server.grpc_url`.

    `explicit=True` starts it in model-control mode "explicit" with every model loaded, so
    models can be reloaded (new gallery versions) through the client API. Logs go to
    `log_path` (default: a file in the work folder) or, with `log_path="-"`, to stdout.
    """

    def __init__(self, repository: str | os.PathLike, grpc_port: int | None = None,
                 http_port: int | None = None, metrics_port: int | None = None, host: str = "127.0.0.1",
                 explicit: bool = False,
                 log_path: str | os.PathLike | None = None, extra_args: tuple[str, ...] = (),
                 security: Security = Security(), insecure: bool = False):
        self.repository = Path(repository).resolve()
        if not self.repository.is_dir():
            raise ServerError(f"model repository {self.repository} does not exist")
        security.check(host, insecure)
        self.host, self.security = host, security
        ports = free_ports(3, host)
        self.grpc_port, self.http_port, self.metrics_port = (given or port for given, port in
                                                             zip((grpc_port, http_port, metrics_port), ports))
        self.explicit, self.extra_args = explicit, tuple(extra_args)
        self.log_path = log_path
        self.process: subprocess.Popen | None = None
        self._workdir: tempfile.TemporaryDirectory | None = None
        self._log_thread: threading.Thread | None = None

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        """Triton's Prometheus metrics: per-model request counts, queue and compute time."""
        return f"http://{self.host}:{self.metrics_port}/metrics"

    def command(self, backends: Path) -> list[str]:
        binary, _ = bundled_server()
        cmd = [str(binary), "--model-repository", str(self.repository), "--backend-directory", str(backends),
               "--grpc-address", self.host, "--http-address", "127.0.0.1", "--metrics-address", self.host,
               "--grpc-port", str(self.grpc_port), "--http-port", str(self.http_port),
               "--metrics-port", str(self.metrics_port), "--exit-on-error", "true",
               "--grpc-header-forward-pattern", HEADER_PATTERN, "--http-header-forward-pattern", HEADER_PATTERN]
        if self.explicit:
            cmd += ["--model-control-mode", "explicit", "--load-model", "*"]
        sec = self.security
        if sec.tls_cert:
            cmd += ["--grpc-use-ssl", "true", "--grpc-server-cert", str(sec.tls_cert), "--grpc-server-key",
                    str(sec.tls_key)]
            if sec.tls_client_ca:
                cmd += ["--grpc-use-ssl-mutual", "true", "--grpc-root-cert", str(sec.tls_client_ca)]
        if sec.admin_key:  # Triton takes the value as an argument only (docs/security.md says what that means)
            rule = f"{ADMIN_PROTOCOLS}:{ADMIN_HEADER}={sec.admin_key}"
            cmd += [f"--grpc-restricted-protocol={rule}", f"--http-restricted-api={rule}"]
        return cmd + list(self.extra_args)

    def start(self) -> TritonServer:
        binary, libs = bundled_server()
        self._workdir = tempfile.TemporaryDirectory(prefix="tbps-triton-")
        work = Path(self._workdir.name)
        backends = _backends(binary, work)
        env = dict(os.environ, LD_LIBRARY_PATH=os.pathsep.join(
            [str(libs)] + [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]))
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        # OpenMP threads (torch in gallery_search) spin ~200 ms after each op by default, which
        # starves the other model processes, and other servers, on the same cores
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        for var, value in ((KEYS_ENV, self.security.keys_file), (AUDIT_ENV, self.security.audit_dir)):
            env.pop(var, None)
            if value:
                env[var] = str(Path(value).resolve())
        if self.security.audit_dir:
            env[AUDIT_SYNC_ENV] = str(self.security.sync_ms())
        if self.log_path == "-":
            out = None
        else:
            self.log_path = Path(self.log_path or work / "tritonserver.log")
            out = open(self.log_path, "ab")
        self.process = subprocess.Popen(self.command(backends), env=env, stdout=out, stderr=subprocess.STDOUT,
                                        start_new_session=True,  # Ctrl-C reaches us, we stop it cleanly
                                        preexec_fn=_dies_with_parent())
        if out is not None:
            out.close()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Until the server and every model report ready (models warm up at load time), asked on
        the loopback HTTP endpoint (no client certificate needed when gRPC is mutual TLS)."""
        deadline = time.monotonic() + timeout
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through an http_proxy
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"tritonserver exited with code {self.process.returncode} while starting; "
                                  f"its log:\n{self.log_tail()}")
            try:
                with direct.open(f"http://127.0.0.1:{self.http_port}/v2/health/ready", timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:  # not listening yet, or not ready (400)
                pass
            time.sleep(0.25)
        raise ServerError(f"tritonserver was not ready after {timeout:.0f} s; its log:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        if not isinstance(self.log_path, Path) or not self.log_path.is_file():
            return "(log on stdout)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def memory_bytes(self) -> int:
        """Resident memory of the server and its model stub processes (Linux /proc)."""
        pids, total = [self.process.pid], 0
        for pid in pids:
            try:
                with open(f"/proc/{pid}/task/{pid}/children") as f:
                    pids += [int(p) for p in f.read().split()]
                with open(f"/proc/{pid}/statm") as f:
                    total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            except FileNotFoundError:
                continue
        return total

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (Triton finishes in-flight requests and unloads), SIGKILL if it hangs."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def serve(repository: str | os.PathLike, grpc_port: int | None = None, host: str = "127.0.0.1",
          explicit: bool = True, metrics_port: int | None = None, http_port: int | None = None,
          security: Security = Security(), insecure: bool = False) -> int:
    """`tbps serve`: run in the foreground until Ctrl-C or SIGTERM, logs on stdout."""
    server = TritonServer(repository, grpc_port=grpc_port, metrics_port=metrics_port, http_port=http_port, host=host,
                          explicit=explicit, log_path="-", security=security, insecure=insecure)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    tls = " over TLS" + (" (mutual)" if security.tls_client_ca else "") if security.tls_cert else ""
    synced = f" (fdatasync'ed within {security.sync_ms():g} ms)" if security.audit_dir and security.sync_ms() else ""
    guards = [what for what, on in (("keys by role", security.keys_file), ("an admin key", security.admin_key),
                                    (f"audit trail in {security.audit_dir}{synced}", security.audit_dir)) if on]
    print(f"Triton is ready: gRPC {server.grpc_url}{tls}, HTTP 127.0.0.1:{server.http_port}, metrics "
          f"{server.metrics_url}; {', '.join(guards) if guards else 'no keys, no audit trail'} (query with: tbps "
          f"search \"a woman in a red coat\" --url {server.grpc_url}). Ctrl-C stops it.", flush=True)
    try:
        while not stop.is_set() and server.process.poll() is None:
            stop.wait(0.5)
    finally:
        code = server.process.poll()
        server.stop()
    return 0 if code in (None, 0) else code
