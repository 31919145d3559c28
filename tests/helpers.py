"""Helpers shared by the tests."""

from __future__ import annotations

import contextlib
import os
import random
import re
import socket
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]


# Ports for servers a test starts later: above Ray's worker ports (10002-19999), below Serve's direct-ingress ports
# (30000-31000) and Linux's ephemeral range (32768-60999). A port the OS hands out (bind to 0) comes from that
# range, where Ray's own servers and every outgoing connection also take ports: the session's Serve port, picked
# minutes before Serve starts, was once taken by then ("Failed to bind to address").
PORT_RANGE = range(20000, 30000)


def free_ports(count: int) -> list[int]:
    """`count` distinct ports of PORT_RANGE free on every interface now."""
    found: list[int] = []
    for port in random.sample(PORT_RANGE, len(PORT_RANGE)):
        with socket.socket() as sock:
            try:
                sock.bind(("", port))
            except OSError:
                continue
        found.append(port)
        if len(found) == count:
            return found
    raise RuntimeError(f"fewer than {count} free ports in {PORT_RANGE}")


def free_port() -> int:
    return free_ports(1)[0]


def answers(url: str) -> bool:
    """Whether a GET of `url` gets a 200 now (a server that is not up yet, or refuses, is False)."""
    import httpx

    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def processes_mentioning(marker: str) -> list[tuple[int, str]]:
    """(pid, command line) of every live process whose command line or open files mention `marker`.

    Ray's daemons carry their session folder on the command line; its workers
    rename themselves (``ray::IDLE``) but keep their log files in that folder
    open. So a Ray started with a unique temp folder is found exactly, without
    name patterns.
    """
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
            status = (entry / "status").read_text()
        except OSError:
            continue
        if "State:\tZ" in status:  # a zombie holds no resources and is its parent's to reap
            continue
        command = raw.replace(b"\0", b" ").decode(errors="replace")
        if marker in command or _has_open_file_under(entry, marker):
            found.append((int(entry.name), command[:200]))
    return found


def stop_pid(pid: int, grace: float = 5.0) -> None:
    """SIGTERM one process, then SIGKILL it if it is still there after `grace` seconds."""
    import signal
    import time

    try:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            os.kill(pid, 0)
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def stop_child(process, grace: float = 10.0) -> None:
    """SIGTERM a child process of ours and reap it; SIGKILL it if it has not exited after `grace` seconds."""
    import subprocess

    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _has_open_file_under(process: Path, marker: str) -> bool:
    try:
        descriptors = list((process / "fd").iterdir())
    except OSError:
        return False
    for descriptor in descriptors:
        try:
            if marker in os.readlink(descriptor):
                return True
        except OSError:
            continue
    return False


FAILURE_LOOKING = re.compile(r"(?i)\b(error|errors|warning|warnings|failed|failure|traceback|exception|will hang)\b|"
                             r"cuda|cuinit|onednn|absl::|core_worker")
"""What a healthy run must not print: words that read as a failure, and the libraries' start-up notices."""


def readme_block(heading: str, which: int = 0) -> str:
    """The bash block number `which` (from 0) after `heading` in README.md."""
    text = (REPOSITORY / "README.md").read_text()
    start = text.index(heading)
    for _ in range(which + 1):
        start = text.index("```bash\n", start) + len("```bash\n")
    return text[start:text.index("\n```", start)]


def serve_metric_lines(name: str, application: str) -> list[str]:
    """The lines of the session Ray's Prometheus export for metric `name` (and its _bucket/_count/_sum series) of
    one Serve application. Ray exports every few seconds: poll."""
    import httpx
    import ray

    port = ray.nodes()[0]["MetricsExportPort"]
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return [line for line in text.splitlines() if line.startswith(name) and f'application="{application}"' in line]


def failure_looking_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if FAILURE_LOOKING.search(line)]


def crash_once_after_epoch_two(marker: str):
    """A Ray Train `after_epoch` hook that kills its own worker process right after epoch 2's checkpoint is
    committed, the first time only (the marker file records that it did)."""

    def after_epoch(epoch: int) -> None:
        import ray.train

        if epoch == 2 and not os.path.exists(marker):
            # Wait until the controller has registered the checkpoint, so the crash cannot race the report.
            ray.train.get_all_reported_checkpoints(consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)
            Path(marker).write_text(str(os.getpid()))
            os._exit(1)

    return after_epoch


class Traffic:
    """`clients` threads posting `requests` ((path, JSON body) pairs, in turn) to `url` until stopped. Every request
    is kept as (time sent, time answered, status or the client error's name, body text): a refused or dropped
    connection is a failed request too."""

    def __init__(self, url: str, requests: list[tuple[str, dict]], clients: int = 1):
        import threading

        self.url, self.requests = url, requests
        self.answers: list[tuple[float, float, int | str, str]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(i,)) for i in range(clients)]

    def _client(self, offset: int) -> None:
        import httpx

        turn = offset
        with httpx.Client() as client:
            while not self._stop.is_set():
                path, body = self.requests[turn % len(self.requests)]
                turn += 1
                sent = time.monotonic()
                try:
                    response = client.post(f"{self.url}{path}", json=body, timeout=30)
                    outcome, text = response.status_code, response.text
                except httpx.HTTPError as error:
                    outcome, text = type(error).__name__, ""
                self.answers.append((sent, time.monotonic(), outcome, text))

    def __enter__(self) -> "Traffic":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)


class FlakyProxy:
    """A TCP proxy on a free port in front of a server, to take the server away as a restart or a network fault
    does, without losing its state (moto keeps none across a real restart):

    - `outage(seconds)` resets every open connection, and every new one as soon as it opens, for `seconds`;
    - `lose_answers(n, method)` lets the next `n` requests with that HTTP method through but resets the connection
      instead of passing the server's answer back: the server did the work and the client cannot know.

    It counts what it did (outages, cut_connections, refused_connections, lost_answers), so that a test can show
    its faults met traffic. Use it as a context manager; threads only, stopped on exit."""

    def __init__(self, target_port: int, host: str = "127.0.0.1"):
        import threading

        self.target = (host, target_port)
        self.port = free_port()
        self.address = f"{host}:{self.port}"
        self.outages = self.lost_answers = self.cut_connections = self.refused_connections = 0
        self._lock = threading.Lock()
        self._down = False
        self._over = threading.Event()
        self._closed = False
        self._lose: dict[bytes, int] = {}
        self._armed: tuple[int, float] | None = None
        self._methods: dict[socket.socket, bytes] = {}  # the method of the request last sent on each connection
        self._sockets: set[socket.socket] = set()
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, self.port))
        self._thread = threading.Thread(target=self._accept_forever, daemon=True)

    def __enter__(self) -> "FlakyProxy":
        self._listener.listen(64)
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() waiting on it; close() alone does not
        self._listener.close()
        self._cut()
        self._thread.join(10)

    def outage(self, seconds: float) -> None:
        """Reset every connection, and each new one, for `seconds` (or until `end_outage`); then pass connections on
        again."""
        with self._lock:
            self.outages += 1
            self._down = True
            self._over.clear()
        self._cut()
        self._over.wait(seconds)
        with self._lock:
            self._down = False

    def end_outage(self) -> None:
        """End the outage in progress now."""
        self._over.set()

    def restore(self) -> None:
        """Disarm a pending outage and end one in progress (also one whose thread is only starting)."""
        with self._lock:
            self._armed = None
        while self._down:
            self._over.set()
            time.sleep(0.05)

    def outage_at_connection(self, count: int, seconds: float) -> None:
        """Start an outage of `seconds` when the `count`-th connection from now opens (that one is reset too): an
        outage that surely meets a client's traffic, whenever its traffic comes."""
        with self._lock:
            self._armed = (count, seconds) if count > 0 else None

    def lose_answers(self, count: int = 1, method: str = "PUT") -> None:
        with self._lock:
            self._lose[method.encode()] = self._lose.get(method.encode(), 0) + count

    def _cut(self) -> None:
        with self._lock:
            doomed, self._sockets = list(self._sockets), set()
            self.cut_connections += len(doomed) // 2  # each connection is two sockets: the client's, the server's
        self._reset(*doomed)

    def _accept_forever(self) -> None:
        import threading

        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed on exit
                continue
            with self._lock:
                if self._armed is not None and not self._down:
                    count, seconds = self._armed
                    self._armed = (count - 1, seconds) if count > 1 else None
                    if count == 1:
                        self._down = True  # from this connection on, before the thread below takes over
                        threading.Thread(target=self.outage, args=(seconds,), daemon=True).start()
                down = self._down
                self.refused_connections += down
            if down:
                self._reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets |= {client, upstream}
            threading.Thread(target=self._pump, args=(client, upstream, client), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, client), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, client: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                if source is client:
                    method = data.split(b" ", 1)[0]
                    if method in (b"GET", b"HEAD", b"PUT", b"POST", b"DELETE"):  # a request starts
                        self._methods[client] = method
                elif re.sub(rb"^(HTTP/1.1 100 Continue\r\n\r\n)+", b"", data):  # an answer, not only go-aheads
                    method = self._methods.get(client, b"")
                    with self._lock:
                        lose = self._lose.get(method, 0) > 0
                        if lose:
                            self._lose[method] -= 1
                            self.lost_answers += 1
                    if lose:
                        self._reset(source, sink)
                        return
                sink.sendall(data)
        except OSError:
            pass
        self._reset(source, sink)

    def _reset(self, *sockets: socket.socket) -> None:
        import struct

        with self._lock:
            self._sockets -= set(sockets)
            for sock in sockets:
                self._methods.pop(sock, None)
        for sock in sockets:  # a reset (linger 0), as from a server that went away, not an orderly close
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.shutdown(socket.SHUT_RDWR)  # wakes the other direction's recv(), which close() alone does not
            sock.close()
