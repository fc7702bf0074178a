"""Embedded Triton Inference Server: the `tritonserver` binary shipped in the `nvidia-pytriton` wheel.

`TritonServer` starts the binary as a child process on free local ports, waits until it reports ready
(all models loaded: strict readiness), fails fast with the server's log tail if the process exits while
starting, and stops it gracefully (SIGINT, wait, then SIGKILL of its process group, which also takes
the Python-backend stubs): the supervision is runners/platform/processes.py's `ChildProcess`.

Lifetime (checked with the 2.51 binary): the server stops when its owner stops it, and dies with it.

* SIGTERM is blocked in the child. BentoML's process manager (circus, `stop_children=True`) sends its
  stop signal to a worker and then to each of the worker's direct children, tritonserver among them;
  the server must outlive the worker's drain. The blocked mask survives exec and tritonserver keeps it
  (every thread's SigBlk shows SIGTERM; it installs handlers for SIGINT and SIGTERM but never unblocks),
  and the stubs it forks inherit it (they also catch SIGTERM with a handler that does nothing). A
  SIGTERM therefore stays pending and harmless; `stop()` sends SIGINT, on which tritonserver exits
  gracefully (it logs "Signal (2) received.", lets in-flight requests finish within
  --exit-timeout-secs, unloads the models; the stubs exit and the backend unlinks its shared memory),
  and SIGKILLs the group after `stop_timeout_s`.
* PR_SET_PDEATHSIG(SIGKILL): a worker killed with SIGKILL takes its tritonserver with it; the stubs
  notice their parent is gone and exit. A server's Python-backend regions are named after its owner
  (runners/triton/reaper.py), which marks the process too (`FOLIO_TRITON_OWNER`), so the next worker's
  start-up reaper removes what a dead owner left; `stop()` removes its own server's leftovers.

What the wheel needs (see DESIGN.md, "Running Triton from the nvidia-pytriton wheel"):

* the binary is `pytriton/tritonserver/bin/tritonserver`; its shared libraries are in the sibling
  folder `nvidia_pytriton.libs/` -> LD_LIBRARY_PATH.
* the Python backend (`libtriton_python.so` + `triton_python_backend_utils.py`) is in
  `pytriton/tritonserver/backends/python/`, but the stub process it launches,
  `triton_python_backend_stub`, ships per Python version in
  `pytriton/tritonserver/python_backend_stubs/3.X/` and must sit next to `libtriton_python.so`.
  Rather than writing into site-packages we assemble a backend directory of symlinks in a private
  work directory and pass it as `--backend-directory`.

How the stub finds the virtual environment (checked with a probe model printing `sys.path`):

* The stub embeds CPython (pybind11) in isolated mode: a probe model saw sys.flags.isolated=1,
  ignore_environment=1, no_user_site=1, so PYTHONPATH/PYTHONHOME are ignored (numpy failed to import
  with PYTHONPATH set to the venv's site-packages). `EXECUTION_ENV_PATH` is a model-config parameter
  for conda-pack archives (unpacked and activated with bash per model), not for a plain venv.
* The embedded interpreter has no program name, so CPython's path calculation searches `python3`
  on PATH. With `<venv>/bin` first on PATH it finds `<venv>/bin/python3` and the venv's
  `pyvenv.cfg`: sys.prefix becomes the venv and the venv's site-packages are importable (the same
  trick pytriton itself uses). `_python_env()` puts `sys.prefix/bin` first on PATH. `.pth` files in
  the venv's site-packages are processed as usual (site is not disabled).
* The stub links `libpython3.X.so.1.0` dynamically. Without help it picks whatever the system has
  (here Debian's 3.11.2 while the venv's base interpreter is pyenv's 3.11.7, so stdlib and
  libpython would disagree). When the running interpreter is a shared build, its LIBDIR goes on
  LD_LIBRARY_PATH as well, so the stub runs exactly the venv's interpreter.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import importlib.util
import logging
import os
import secrets
import shutil
import signal
import sys
import sysconfig
import tempfile
import urllib.error
import urllib.request
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from runners.platform.processes import ChildProcess, StartupError, free_port, log_tail
from runners.triton import reaper

log = logging.getLogger(__name__)

_PYTHON_BACKEND_FILES = ("libtriton_python.so", "triton_python_backend_utils.py")
_STUB_NAME = "triton_python_backend_stub"
# APIs Folio never calls, closed to anyone without a per-server random key (statistics and the
# repository API stay open: the benchmarks and the explicit-control tests use them).
RESTRICTED_APIS = "shared-memory,logging,trace"
_TABLE_LINES = ("+", "|")  # Triton's start-up tables in its log


class TritonError(RuntimeError):
    """The embedded Triton server could not be found, started or stopped."""


class TritonStartupError(TritonError, StartupError):
    """The server exited or did not become ready in time; the message carries the log tail."""


@dataclass(frozen=True)
class TritonDistribution:
    """Paths of the Triton build inside the installed `nvidia-pytriton` wheel."""

    root: Path  # .../site-packages/pytriton/tritonserver
    libs: Path  # .../site-packages/nvidia_pytriton.libs

    @property
    def binary(self) -> Path:
        return self.root / "bin" / "tritonserver"

    @property
    def python_backend(self) -> Path:
        return self.root / "backends" / "python"

    def stub(self, python_version: str | None = None) -> Path:
        version = python_version or f"{sys.version_info.major}.{sys.version_info.minor}"
        return self.root / "python_backend_stubs" / version / _STUB_NAME

    @classmethod
    def locate(cls) -> TritonDistribution:
        """Find the wheel without importing pytriton (its import pulls in a lot)."""
        spec = importlib.util.find_spec("pytriton")
        if spec is None or not spec.submodule_search_locations:
            raise TritonError("nvidia-pytriton is not installed: `pip install nvidia-pytriton`")
        package = Path(next(iter(spec.submodule_search_locations)))
        dist = cls(root=package / "tritonserver", libs=package.parent / "nvidia_pytriton.libs")
        dist.check()
        return dist

    def check(self, python_version: str | None = None) -> None:
        missing = [
            p
            for p in (
                self.binary,
                self.libs,
                self.stub(python_version),
                *(self.python_backend / f for f in _PYTHON_BACKEND_FILES),
            )
            if not p.exists()
        ]
        if missing:
            raise TritonError(
                "the nvidia-pytriton wheel is incomplete or for another Python; missing: "
                + ", ".join(str(p) for p in missing)
            )

    def assemble_backends(self, dest: Path, python_version: str | None = None) -> Path:
        """Create `dest/python/` = the wheel's Python backend + the stub for this Python; return `dest`.

        Symlinks, so nothing is copied and site-packages stays untouched. Idempotent.
        """
        python_dir = dest / "python"
        python_dir.mkdir(parents=True, exist_ok=True)
        links = {name: self.python_backend / name for name in _PYTHON_BACKEND_FILES}
        links[_STUB_NAME] = self.stub(python_version)
        for name, target in links.items():
            link = python_dir / name
            if link.is_symlink() and Path(os.readlink(link)) == target:
                continue
            if link.exists() or link.is_symlink():
                link.unlink()
            link.symlink_to(target)
        return dest


def _python_env(base: dict[str, str], dist: TritonDistribution) -> dict[str, str]:
    """Environment for tritonserver so that the Python-backend stub runs this interpreter's venv.

    See the module docstring for why PATH (not PYTHONPATH) is what selects the environment.
    """
    env = dict(base)
    bin_dir = Path(sys.prefix) / "bin"
    if not (bin_dir / "python3").exists():  # unusual layouts: fall back to the running executable's dir
        bin_dir = Path(sys.executable).parent
    env["PATH"] = os.pathsep.join([str(bin_dir), env.get("PATH", "")]).rstrip(os.pathsep)

    ld_paths = [str(dist.libs)]
    libdir = sysconfig.get_config_var("LIBDIR")
    ldlibrary = sysconfig.get_config_var("LDLIBRARY")
    shared = sysconfig.get_config_var("Py_ENABLE_SHARED") and libdir and ldlibrary
    in_default_dirs = str(libdir).startswith(("/usr/lib", "/lib"))  # searched anyway; don't reorder
    if shared and not in_default_dirs and (Path(libdir) / ldlibrary).exists():
        ld_paths.append(libdir)  # the stub then links the same libpython as this interpreter
    if env.get("LD_LIBRARY_PATH"):
        ld_paths.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(ld_paths)
    # An inherited PYTHONHOME would override the venv discovery above.
    env.pop("PYTHONHOME", None)
    return env


_live_servers: weakref.WeakSet[TritonServer] = weakref.WeakSet()


@atexit.register
def _stop_live_servers() -> None:  # pragma: no cover - safety net for interpreter exit
    for server in list(_live_servers):
        with contextlib.suppress(Exception):
            server.stop()


class TritonServer:
    """Lifecycle of one embedded `tritonserver` process.

    Usage::

        with TritonServer(log_file=Path("triton.log")).start(Path("model_repository")) as server:
            client = tritonclient.grpc.InferenceServerClient(server.grpc_url)   # stop() on exit

    or `server = TritonServer(); server.start(repo); ...; server.stop()`.

    Ports default to free ones picked at start (127.0.0.1 only, unless `host` says otherwise).
    `model_control_mode="explicit"` starts with no models unless `load_models` names them (then load
    and unload through the client's repository API). `restart()` reuses the repository and ports.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        log_file: Path | None = None,
        work_dir: Path | None = None,
        model_control_mode: str = "none",
        load_models: Sequence[str] = (),
        startup_timeout_s: float = 60.0,
        stop_timeout_s: float = 15.0,
        log_verbose: int = 0,
        extra_args: Sequence[str] = (),
        distribution: TritonDistribution | None = None,
    ) -> None:
        if model_control_mode not in ("none", "explicit", "poll"):
            raise ValueError(f"model_control_mode must be none, explicit or poll, not {model_control_mode!r}")
        self.host = host
        self._fixed_ports = (http_port, grpc_port, metrics_port)
        self.http_port, self.grpc_port, self.metrics_port = self._fixed_ports
        self._log_file_arg = log_file
        self._work_dir_arg = work_dir
        self.model_control_mode = model_control_mode
        self.load_models = tuple(load_models)
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.log_verbose = log_verbose
        self.extra_args = tuple(extra_args)
        self._dist = distribution
        self._restricted_key = secrets.token_hex(24)
        self._child: ChildProcess | None = None
        self._shm_prefix: str | None = None  # per spawn: the Python-backend regions of that process
        self._owned_work_dir: Path | None = None
        self.model_repository: Path | None = None
        self.log_file: Path | None = log_file
        self.startup_s: float | None = None

    # ---------------------------------------------------------------- properties
    def _address(self, port: int | None) -> str:
        if port is None:
            raise TritonError("server not started")
        return f"{self._client_host}:{port}"

    @property
    def grpc_url(self) -> str:
        """`host:port` as `tritonclient.grpc(.aio).InferenceServerClient(url=...)` expects it."""
        return self._address(self.grpc_port)

    @property
    def http_url(self) -> str:
        return self._address(self.http_port)

    @property
    def metrics_url(self) -> str:
        return f"http://{self._address(self.metrics_port)}/metrics"

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child is not None else None

    @property
    def _client_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host

    # ---------------------------------------------------------------- lifecycle
    def start(self, model_repository: Path, *, attempts: int = 3) -> TritonServer:
        """Start the server on `model_repository`, block until it is ready (or raise); return self.

        Raises TritonStartupError (with the log tail) if the process exits while starting or is not
        ready within `startup_timeout_s`. Lost races for auto-picked ports are retried `attempts` times.
        """
        if self.is_alive():
            raise TritonError(f"server already running (pid {self.pid})")
        self.model_repository = Path(model_repository).resolve()
        if not self.model_repository.is_dir():
            raise TritonError(f"model repository {self.model_repository} is not a directory")
        last: TritonStartupError | None = None
        for attempt in range(1, attempts + 1):
            try:
                self._spawn()
                self._wait_ready()
                return self
            except TritonStartupError as exc:
                last = exc
                self._terminate()
                # Ports picked by free_port() can be taken before tritonserver binds them: pick anew.
                # A port the caller fixed stays fixed, so that failure is final.
                port_race = "already in use" in str(exc)
                chosen_by_caller = any(port is not None for port in self._fixed_ports)
                if not port_race or chosen_by_caller or attempt == attempts:
                    break
                log.warning("tritonserver lost a port race, retrying on new ports (%d/%d)", attempt, attempts)
            except BaseException:  # e.g. KeyboardInterrupt while waiting: leave no half-started server
                self._terminate()
                raise
        assert last is not None
        raise last

    def stop(self, timeout_s: float | None = None) -> None:
        """Graceful stop: SIGINT, wait `stop_timeout_s`, then SIGKILL the process group; then remove the
        server's shared-memory regions if it left any (it does when it was killed). ``timeout_s``: the
        wait before SIGKILL (default ``stop_timeout_s``; 0 when nothing is in flight: a graceful exit
        takes ~3 s, unloading every model)."""
        self._terminate(timeout_s)
        if self._owned_work_dir is not None:
            shutil.rmtree(self._owned_work_dir, ignore_errors=True)
            self._owned_work_dir = None

    def restart(self) -> None:
        """Stop (if needed) and start again on the same repository and ports."""
        if self.model_repository is None:
            raise TritonError("restart() before start()")
        repo = self.model_repository
        self._terminate()
        self._fixed_ports = (self.http_port, self.grpc_port, self.metrics_port)
        self.start(repo)

    def is_alive(self) -> bool:
        return self._child is not None and self._child.alive()

    def is_ready(self, timeout_s: float = 1.0) -> bool:
        """HTTP `/v2/health/ready`: true once every model in the repository is loaded."""
        if not self.is_alive() or self.http_port is None:
            return False
        url = f"http://{self._client_host}:{self.http_port}/v2/health/ready"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False

    def log_tail(self, lines: int = 60) -> str:
        # Triton prints wide ASCII tables at start-up; they crowd out the lines that matter.
        return log_tail(self.log_file, lines, skip=_TABLE_LINES)

    def command(self) -> list[str]:
        """The argv used to start the server (ports and paths filled in once start() picked them)."""
        dist = self._distribution()
        if self.model_repository is None:
            raise TritonError("command() before start(): no model repository yet")
        args = [
            str(dist.binary),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={self._backend_dir()}",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            # CPU-only host: no pinned (CUDA host) memory pool, no GPU metrics (NVML/DCGM are absent).
            "--pinned-memory-pool-byte-size=0",
            "--allow-gpu-metrics=false",
            # Configs are rendered complete; skipping auto-complete saves one stub launch per model.
            "--disable-auto-complete-config",
            f"--model-control-mode={self.model_control_mode}",
            f"--exit-timeout-secs={max(1, int(self.stop_timeout_s) - 1)}",
            f"--log-verbose={self.log_verbose}",
            # The bundled server is 2.51 (release 24.10), older than NVIDIA's Python-backend fixes
            # (docs/security.md): it listens on loopback only, and the APIs the published exploit chains
            # go through and Folio never calls need a key nobody holds (random, per server).
            f"--http-restricted-api={RESTRICTED_APIS}:triton-restricted-key={self._restricted_key}",
            f"--grpc-restricted-protocol={RESTRICTED_APIS}:triton-restricted-key={self._restricted_key}",
        ]
        if self._shm_prefix is not None:  # named after the owner: see runners/triton/reaper.py
            args.append(f"--backend-config=python,shm-region-prefix-name={self._shm_prefix}")
        args += [f"--load-model={name}" for name in self.load_models]
        args += list(self.extra_args)
        return args

    # ---------------------------------------------------------------- context manager
    def __enter__(self) -> TritonServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ---------------------------------------------------------------- internals
    def _distribution(self) -> TritonDistribution:
        if self._dist is None:
            self._dist = TritonDistribution.locate()
        return self._dist

    def _work_dir(self) -> Path:
        if self._work_dir_arg is not None:
            self._work_dir_arg.mkdir(parents=True, exist_ok=True)
            return self._work_dir_arg.resolve()  # tritonserver needs absolute backend/repository paths
        if self._owned_work_dir is None:
            self._owned_work_dir = Path(tempfile.mkdtemp(prefix="folio-triton-"))
        return self._owned_work_dir

    def _backend_dir(self) -> Path:
        return self._work_dir() / "backends"

    def _spawn(self) -> None:
        dist = self._distribution()
        dist.assemble_backends(self._backend_dir())
        http, grpc, metrics = self._fixed_ports
        self.http_port = http or free_port(self.host or "127.0.0.1")
        self.grpc_port = grpc or free_port(self.host or "127.0.0.1")
        self.metrics_port = metrics or free_port(self.host or "127.0.0.1")
        self.log_file = self._log_file_arg or self._work_dir() / "tritonserver.log"
        owner = reaper.owner_mark()
        self._shm_prefix = reaper.shm_prefix(owner, secrets.token_hex(4))
        argv = self.command()
        log.info("starting tritonserver: %s (log: %s)", " ".join(argv), self.log_file)
        # Own process group (stop() takes the stubs down with it); the stubs' output lands in the same log.
        # SIGTERM blocked, SIGINT to stop, killed with this process: see the module docstring.
        child = ChildProcess(
            "tritonserver",
            self.log_file,
            stop_timeout_s=self.stop_timeout_s,
            tail_skip=_TABLE_LINES,
            stop_signal=signal.SIGINT,
            blocked_signals={signal.SIGTERM},
            die_with_parent=True,
        )
        env = {**_python_env(dict(os.environ), dist), reaper.OWNER_ENV: owner}
        self._child = child.spawn(argv, env=env, cwd=self._work_dir())
        _live_servers.add(self)

    def _wait_ready(self) -> None:
        assert self._child is not None
        ready = functools.partial(self.is_ready, timeout_s=0.5)
        self.startup_s = self._child.wait_ready(ready, self.startup_timeout_s, error=TritonStartupError)
        log.info("tritonserver ready in %.2fs (grpc %s)", self.startup_s, self.grpc_url)

    def _terminate(self, timeout_s: float | None = None) -> None:
        child, self._child = self._child, None
        _live_servers.discard(self)
        if child is not None:
            child.stop(timeout_s)
        if self._shm_prefix is not None:  # a killed server leaves its regions: nothing else uses them
            try:
                reaper.remove_unused_regions(prefixes=[self._shm_prefix], min_age_s=0)
            except Exception:  # stopping must not fail over leftovers; the next start-up reaper retries
                log.exception("removing tritonserver's shared memory failed")
