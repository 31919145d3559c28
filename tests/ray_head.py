"""A throwaway Ray cluster started with `ray start --head`, for tests that submit Ray jobs.

It stays apart from the session's `ray.init()` Ray (tests/conftest.py) and from any
other Ray on the machine:

- its own short temp dir (/tmp/orh-XXXXXXXX: Ray's Unix socket paths must stay
  under ~107 characters, which rules out pytest's tmp_path);
- free ports for every port whose Ray default is fixed (GCS 6379, dashboard 8265,
  client server 10001, dashboard agent 52365); the others, workers' included, are
  left to the operating system (port 0);
- its own authentication token. Ray 2.60 runs token authentication, and with
  RAY_AUTH_MODE=token every client looks for the token in RAY_AUTH_TOKEN, then
  RAY_AUTH_TOKEN_PATH, then ~/.ray/auth_token. The cluster, the `ray` CLI and
  (by inheritance, through raylet -> JobSupervisor -> driver) every job driver
  get RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH pointing at a 0600 file in the
  temp dir, so the machine-wide ~/.ray/auth_token is neither read nor written.

`ray start --head --block` runs as our own child. Ray gives every worker and every
job driver a process group of its own, so the cluster cannot be stopped by
process group; instead the child is made a child subreaper (every orphaned
process of the cluster is re-parented to it, so all of them stay in its process
tree) and receives SIGTERM if the test process dies. Stopping sends it SIGTERM
(Ray then stops its processes itself), records its process tree meanwhile, and
kills by PID whatever recorded process outlives it, then fails naming it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from orchard.config import LEGACY_KERAS_ENV
from orchard.runtime import LOCAL_SERVE_ENV
from tests.helpers import free_ports, processes_mentioning

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# Runs in the child before it becomes `ray start`: SIGTERM when the test process
# dies (PR_SET_PDEATHSIG = 1), and adopt orphaned descendants
# (PR_SET_CHILD_SUBREAPER = 36). Both survive execv.
_FATE_SHARING_LAUNCHER = """\
import ctypes, os, signal, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(1, signal.SIGTERM) != 0 or libc.prctl(36, 1) != 0:
    sys.exit(f"prctl failed: {os.strerror(ctypes.get_errno())}")
if os.getppid() != int(sys.argv[1]):
    sys.exit("the test process died before Ray started")
os.execv(sys.argv[2], sys.argv[2:])
"""


class RayJobSubmitError(RuntimeError):
    """`ray job submit` failed before the cluster accepted a job."""


@dataclass(frozen=True)
class _Process:
    pid: int
    started: int
    """Start time in clock ticks since boot: tells a process from a later one reusing its PID."""
    command: str


@dataclass
class RayHeadCluster:
    """A running `ray start --head` cluster and the means to submit jobs to it."""

    address: str
    """The dashboard's HTTP address, what `ray job submit --address` takes."""
    gcs_address: str
    """host:port of the GCS, what `ray.init(address=...)` takes."""
    env: dict[str, str]
    """Environment to run the `ray` CLI (or a driver) against this cluster with."""
    temp_dir: Path
    working_dir: Path
    worker_temp_dirs: list[Path] = field(default_factory=list)
    """The temp folders of the nodes joined to the head, in the order given."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds taken by: start, stop, and each submission (submit:<submission id>)."""
    worker_processes: list[subprocess.Popen] = field(default_factory=list)
    """The `ray start --address` of each joined node, in the order given."""

    def lose_worker_node(self, index: int = 0) -> int:
        """SIGKILL every process of a joined node at once, as when its machine dies; returns how many there were."""
        process, temp_dir = self.worker_processes[index], self.worker_temp_dirs[index]
        doomed = {process.pid, *_descendants(process.pid), *(pid for pid, _ in processes_mentioning(str(temp_dir)))}
        for pid in doomed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        process.wait()
        return len(doomed)

    @property
    def ray_executable(self) -> str:
        return _ray_executable()

    def submit(self, args: list[str], timeout: float, runtime_env_json: dict | None = None,
               submission_id: str | None = None) -> tuple[int, str]:
        """Run `ray job submit --working-dir <working_dir> -- <args>`, wait for the job, return (returncode, logs).

        `returncode` is the CLI's: 0 when the job succeeded, 1 when it failed. `logs`
        is the job's own output (its driver log), as the job API serves it.
        """
        submission_id = submission_id or f"orh-{uuid.uuid4().hex[:12]}"
        command = [self.ray_executable, "job", "submit", "--address", self.address,
                   "--working-dir", str(self.working_dir), "--submission-id", submission_id]
        if runtime_env_json is not None:
            command += ["--runtime-env-json", json.dumps(runtime_env_json)]
        command += ["--", *args]
        started = time.monotonic()
        try:
            result = subprocess.run(command, env=self.env, cwd=self.working_dir, capture_output=True,
                                    text=True, timeout=timeout)
        except subprocess.TimeoutExpired as timed_out:
            self._stop_job(submission_id)
            raise TimeoutError(
                f"job {submission_id} ({shlex.join(args)}) did not finish within {timeout} s; output so far:\n"
                f"{_text(timed_out.stdout)}{_text(timed_out.stderr)}"
            ) from None
        self.timings[f"submit:{submission_id}"] = time.monotonic() - started
        log.info("job %s: `ray job submit` exited with %d after %.1f s", submission_id, result.returncode,
                 self.timings[f"submit:{submission_id}"])
        try:
            logs = self.job_logs(submission_id)
        except urllib.error.HTTPError as error:
            raise RayJobSubmitError(
                f"`ray job submit` exited with {result.returncode} and the cluster knows no job "
                f"{submission_id} (HTTP {error.code}):\n{result.stdout}{result.stderr}"
            ) from None
        return result.returncode, logs

    def start(self, args: list[str], submission_id: str, runtime_env_json: dict | None = None) -> None:
        """`ray job submit --no-wait`: start a long-running job (a server); stop it with `stop_job`."""
        command = [self.ray_executable, "job", "submit", "--no-wait", "--address", self.address,
                   "--working-dir", str(self.working_dir), "--submission-id", submission_id]
        if runtime_env_json is not None:
            command += ["--runtime-env-json", json.dumps(runtime_env_json)]
        result = subprocess.run([*command, "--", *args], env=self.env, cwd=self.working_dir, capture_output=True,
                                text=True, timeout=120)
        if result.returncode != 0:
            raise RayJobSubmitError(f"`ray job submit --no-wait` failed:\n{result.stdout}{result.stderr}")

    def stop_job(self, submission_id: str, timeout: float = 60.0) -> str:
        """Stop a job, wait until it has stopped, and return its status."""
        self._stop_job(submission_id, timeout)
        return self.job_info(submission_id)["status"]

    def job_info(self, submission_id: str) -> dict:
        """The job API's record of a job: status, message, driver_exit_code, ..."""
        return self.request("GET", f"/api/jobs/{submission_id}")

    def job_logs(self, submission_id: str) -> str:
        return self.request("GET", f"/api/jobs/{submission_id}/logs")["logs"]

    def _stop_job(self, submission_id: str, timeout: float = 20.0) -> None:
        """Ask the cluster to stop a job and wait until it has (SIGTERM, then SIGKILL after 3 s)."""
        deadline = time.monotonic() + timeout
        with contextlib.suppress(urllib.error.URLError):
            self.request("POST", f"/api/jobs/{submission_id}/stop")
            while self.job_info(submission_id)["status"] in ("PENDING", "RUNNING") and time.monotonic() < deadline:
                time.sleep(0.25)

    def request(self, method: str, path: str) -> dict:
        """One call to the dashboard's REST API (jobs, Serve) with the cluster's token; the JSON answer."""
        token = Path(self.env["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
        request = urllib.request.Request(self.address + path, method=method,
                                         headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)


@dataclass(frozen=True)
class WorkerNode:
    """A node to join to the head with `ray start --address`: its CPUs and custom resources (a custom resource can
    stand in for a GPU on a machine without one)."""

    num_cpus: int = 1
    resources: dict[str, float] = field(default_factory=dict)


@contextlib.contextmanager
def ray_head_cluster(num_cpus: int = 2, *, working_dir: Path = PROJECT_ROOT,
                     object_store_memory: int = 512 * 1024**2, start_timeout: float = 90.0,
                     stop_timeout: float = 60.0, worker_nodes: tuple[WorkerNode, ...] = (),
                     env: dict[str, str] | None = None, serve_direct_ingress: bool = True,
                     head_resources: dict[str, float] | None = None) -> Iterator[RayHeadCluster]:
    """Start a Ray with `ray start --head --block`, and join `worker_nodes` to it, each a `ray start --address
    --block` with a temp folder of its own; stop them all and check nothing survives on exit.

    `env` is added to every node's environment (as a cloud image or instance profile would give it, e.g. the
    object store's credentials). Nodes on one machine share its ports: give several nodes
    `serve_direct_ingress=False` (each replica's own HTTP port comes from one range per node) and run Serve's proxy
    on the head only."""
    temp_dir = Path(tempfile.mkdtemp(prefix="orh-", dir="/tmp"))
    token_path = temp_dir / "auth_token"
    descriptor = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as token_file:
        token_file.write(secrets.token_hex(32))
    env = {**_cluster_environment(token_path, serve_direct_ingress), **(env or {})}
    gcs_port, dashboard_port, client_port, agent_port = free_ports(4)
    command = [
        sys.executable, "-c", _FATE_SHARING_LAUNCHER, str(os.getpid()),
        _ray_executable(), "start", "--head", "--block", "--disable-usage-stats",
        "--num-cpus", str(num_cpus), "--object-store-memory", str(object_store_memory),
        "--temp-dir", str(temp_dir), "--port", str(gcs_port),
        "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard_port),
        "--ray-client-server-port", str(client_port), "--dashboard-agent-listen-port", str(agent_port),
        "--min-worker-port", "0", "--max-worker-port", "0",
        "--log-style", "record", "--log-color", "false",
        *(["--resources", json.dumps(head_resources)] if head_resources else []),
    ]
    output_path = temp_dir / "ray-start.log"
    started = time.monotonic()
    with open(output_path, "wb") as output:
        # A session of its own: a Ctrl-C meant for pytest must not reach Ray before pytest's teardown stops it.
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    cluster = RayHeadCluster(address=f"http://127.0.0.1:{dashboard_port}", gcs_address="", env=env,
                             temp_dir=temp_dir, working_dir=working_dir)
    workers: list[tuple[subprocess.Popen, Path]] = []
    try:
        cluster.gcs_address = _wait_until_ready(cluster, process, output_path, gcs_port, start_timeout)
        for node in worker_nodes:
            workers.append(_join(cluster, node, env))
            cluster.worker_processes.append(workers[-1][0])
            cluster.worker_temp_dirs.append(workers[-1][1])
        _wait_for_nodes(cluster, 1 + len(worker_nodes), workers, start_timeout)
        cluster.timings["start"] = time.monotonic() - started
        log.info("Ray head %s (GCS %s) and %d more node(s) started in %.1f s", cluster.address, cluster.gcs_address,
                 len(worker_nodes), cluster.timings["start"])
        yield cluster
    finally:
        stopping = time.monotonic()
        survivors = []
        for worker, worker_temp in workers:
            survivors += _stop(worker, worker_temp, stop_timeout)
            shutil.rmtree(worker_temp, ignore_errors=True)
        survivors += _stop(process, temp_dir, stop_timeout)
        cluster.timings["stop"] = time.monotonic() - stopping
        log.info("Ray head %s stopped in %.1f s", cluster.address, cluster.timings["stop"])
        if survivors:  # said here too: an exception from the body would hide the assertion below
            log.error("Ray head in %s left processes running: %s", temp_dir, survivors)
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert not survivors, (
        f"Ray head in {temp_dir} left processes running after `ray start` exited "
        f"(those among its own processes were then killed): {survivors}"
    )


def _join(cluster: RayHeadCluster, node: WorkerNode, env: dict[str, str]) -> tuple[subprocess.Popen, Path]:
    """Start `ray start --address <head> --block` for one more node, with a temp folder of its own."""
    temp_dir = Path(tempfile.mkdtemp(prefix="orw-", dir="/tmp"))
    (agent_port,) = free_ports(1)
    command = [
        sys.executable, "-c", _FATE_SHARING_LAUNCHER, str(os.getpid()),
        _ray_executable(), "start", "--address", cluster.gcs_address, "--block", "--disable-usage-stats",
        "--num-cpus", str(node.num_cpus), "--object-store-memory", str(256 * 1024**2),
        "--temp-dir", str(temp_dir), "--dashboard-agent-listen-port", str(agent_port),
        "--min-worker-port", "0", "--max-worker-port", "0", "--log-style", "record", "--log-color", "false",
        *(["--resources", json.dumps(node.resources)] if node.resources else []),
    ]
    with open(temp_dir / "ray-start.log", "wb") as output:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    return process, temp_dir


def _wait_for_nodes(cluster: RayHeadCluster, count: int, workers: list[tuple[subprocess.Popen, Path]],
                    timeout: float) -> None:
    """Wait until the cluster reports `count` live nodes (the state API, through the dashboard)."""
    deadline = time.monotonic() + timeout
    alive = 0
    while True:
        for process, temp_dir in workers:
            if process.poll() is not None:
                raise RuntimeError(f"`ray start --address` exited with {process.returncode}:\n"
                                   f"{_tail(temp_dir / 'ray-start.log')}")
        with contextlib.suppress(OSError, KeyError):
            nodes = cluster.request("GET", "/api/v0/nodes?detail=false&limit=100")["data"]["result"]["result"]
            alive = sum(1 for node in nodes if node["state"] == "ALIVE")
            if alive >= count:
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{alive} of {count} Ray node(s) alive after {timeout} s")
        time.sleep(0.5)


def _ray_executable() -> str:
    return str(Path(sys.executable).parent / "ray")


def _cluster_environment(token_path: Path, serve_direct_ingress: bool = True) -> dict[str, str]:
    # Nothing of the session's Ray (RAY_ADDRESS, RAY_AUTH_*, ...) or of the developer's Orchard settings leaks in.
    env = {name: value for name, value in os.environ.items() if not name.startswith(("RAY_", "ORCHARD_"))}
    # `python` in a job's entrypoint must be the project's interpreter: put the virtualenv first on PATH.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    # Not in the cluster's environment (this process has it once the session's Ray ran): a user's `ray start`
    # lacks it, and the jobs must get it the way they would there, from orchard.runtime.ray_session's runtime env.
    for name in LEGACY_KERAS_ENV:
        env.pop(name, None)
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token_path),
        RAY_USAGE_STATS_ENABLED="0",
        # On SIGTERM Ray 2.60 first drains the node for up to 30 s (for Serve behind Kubernetes); not for a test.
        RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",
    )
    # Serve as cluster.yaml's `ray start` runs it, with a replica's draining period shortened: no load balancer here.
    env.update(LOCAL_SERVE_ENV if serve_direct_ingress else
               {name: value for name, value in LOCAL_SERVE_ENV.items() if "DIRECT_INGRESS" not in name})
    return env


def _wait_until_ready(cluster: RayHeadCluster, process: subprocess.Popen, output_path: Path, gcs_port: int,
                      timeout: float) -> str:
    """Wait for `ray start` to record its GCS address (its last step before blocking) and for the job API to answer.

    Returns the GCS address as Ray recorded it: host:port, the host being the node IP that Ray picked.
    """
    address_file = cluster.temp_dir / "ray_current_cluster"
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"`ray start --head` exited with {process.returncode}:\n{_tail(output_path)}")
        recorded = address_file.read_text().strip() if address_file.exists() else ""
        try:
            if recorded.endswith(f":{gcs_port}"):
                cluster.request("GET", "/api/jobs/")
                return recorded
            waiting_for = f"GCS address in {address_file} (found {recorded!r})"
        except OSError as error:  # refused while starting; an HTTP 401/403 would mean our token is not the one
            waiting_for = f"the job API at {cluster.address} (last: {error})"
        if time.monotonic() > deadline:
            raise TimeoutError(f"Ray head not ready within {timeout} s, still waiting for {waiting_for}:\n"
                               f"{_tail(output_path)}")
        time.sleep(0.25)


def _stop(process: subprocess.Popen, temp_dir: Path, timeout: float) -> list[tuple[int, str]]:
    """SIGTERM `ray start`, then make sure every process of the cluster is gone; returns those that were not."""
    seen = _descendants(process.pid)
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        seen.update(_descendants(process.pid))  # orphans are re-parented to it: all of the cluster is in its tree
        time.sleep(0.2)
    if process.poll() is None:
        log.error("`ray start` (pid %d) still running %.0f s after SIGTERM: killing it", process.pid, timeout)
        process.kill()
    process.wait()
    # Ray kills its direct children; some grandchildren (a job driver's watchdog) need a moment more.
    deadline = time.monotonic() + 15
    while _survivors(seen, temp_dir) and time.monotonic() < deadline:
        time.sleep(0.2)
    survivors = _survivors(seen, temp_dir)
    for pid, _ in survivors:
        if pid in seen and _running(seen[pid]):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return survivors


def _survivors(seen: dict[int, _Process], temp_dir: Path) -> list[tuple[int, str]]:
    running = {pid: recorded.command for pid, recorded in seen.items() if _running(recorded)}
    running.update(processes_mentioning(str(temp_dir)))  # the folder is unique to this cluster
    return sorted(running.items())


def _descendants(root: int) -> dict[int, _Process]:
    children: dict[int, list[int]] = {}
    started: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        stat = _stat(int(entry.name))
        if stat is not None:
            children.setdefault(stat[1], []).append(int(entry.name))
            started[int(entry.name)] = stat[2]
    found: dict[int, _Process] = {}
    pending = list(children.get(root, []))
    while pending:
        pid = pending.pop()
        found[pid] = _Process(pid, started[pid], _command(pid))
        pending.extend(children.get(pid, []))
    return found


def _running(recorded: _Process) -> bool:
    stat = _stat(recorded.pid)
    return stat is not None and stat[0] != "Z" and stat[2] == recorded.started


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time) from /proc/<pid>/stat, or None once the process is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()  # the command name, in parentheses, may hold spaces
    return fields[0], int(fields[1]), int(fields[19])


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:200]
    except OSError:
        return ""


def _tail(path: Path, characters: int = 4000) -> str:
    return path.read_text(errors="replace")[-characters:]


def _text(output: str | bytes | None) -> str:
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return output or ""
