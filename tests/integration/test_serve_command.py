"""`orchard serve` as a user runs it: a subprocess with a Ray of its own, stopped with SIGTERM."""

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers import free_port, processes_mentioning

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # ~35 s: keeps `make test` well under its 15 minutes

FRUIT = {"red": 0.82, "green": 0.26, "blue": 0.22, "weight_g": 190.0, "diameter_mm": 77.0, "smoothness": 0.9}


def _lines(stream, into: queue.Queue) -> None:
    for line in stream:
        into.put(line)


def test_orchard_serve_answers_at_both_addresses_and_stops_cleanly_on_sigterm(trained_models, ray_temp):
    storage, _ = trained_models
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORCHARD_", "RAY_"))}
    env.update(RAY_TMPDIR=ray_temp, ORCHARD_NUM_CPUS="2")
    port = free_port()
    orchard = Path(sys.executable).parent / "orchard"
    server = subprocess.Popen([str(orchard), "--storage", storage.root_uri, "serve", "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    printed: queue.Queue = queue.Queue()
    threading.Thread(target=_lines, args=(server.stdout, printed), daemon=True).start()
    stderr: list[str] = []
    threading.Thread(target=lambda: stderr.extend(server.stderr), daemon=True).start()
    try:
        out = ""
        deadline = time.monotonic() + 180
        while "replicas answering directly" not in out and time.monotonic() < deadline and server.poll() is None:
            try:
                out += printed.get(timeout=1)
            except queue.Empty:
                pass
        assert f"at http://127.0.0.1:{port} " in out, (out, "".join(stderr)[-3000:])
        direct = re.findall(r"http://127\.0\.0\.1:(\d+)", out.split("replicas answering directly")[1])
        assert len(direct) == 1 and int(direct[0]) != port, out

        for answering_port in (port, int(direct[0])):
            response = httpx.post(f"http://127.0.0.1:{answering_port}/v1/models/fruit_classifier:predict",
                                  json={"instances": [FRUIT]}, timeout=60)
            assert response.status_code == 200, response.text
            assert response.json()["model"] == "fruit_classifier" and response.json()["version"] == 1

        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=120) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert "SIGTERM received" not in "".join(stderr)  # Ray's own handler would dump a stack trace and exit
    deadline = time.monotonic() + 30
    while processes_mentioning(ray_temp) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert processes_mentioning(ray_temp) == []
