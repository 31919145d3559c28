"""A healthy run prints only Orchard's own output: native start-up notices go to /dev/null unless verbose."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from orchard.config import VERBOSE_ENV, OrchardConfig
from tests.helpers import REPOSITORY, failure_looking_lines

NATIVE_WRITE = """
import os
from orchard.runtime import quiet_native_stderr
with quiet_native_stderr():
    os.write(2, b"I0000 cudart_stub.cc:31] Could not find cuda drivers on your machine\\n")
os.write(2, b"after\\n")
raise SystemExit("a real error still shows")
"""


@pytest.mark.parametrize(("verbose", "shown"), [("0", False), ("1", True)])
def test_native_stderr_is_silenced_unless_verbose(verbose, shown):
    env = {**os.environ, VERBOSE_ENV: verbose, "PYTHONPATH": str(REPOSITORY)}
    result = subprocess.run([sys.executable, "-c", NATIVE_WRITE], env=env, capture_output=True, text=True, timeout=60)
    assert ("Could not find cuda drivers" in result.stderr) is shown
    assert "after" in result.stderr and "a real error still shows" in result.stderr


def test_the_runtime_env_tells_workers_whether_to_be_verbose(tmp_path):
    quiet = OrchardConfig.from_sources(env={}, storage=str(tmp_path))
    loud = OrchardConfig.from_sources(env={VERBOSE_ENV: "1"}, storage=str(tmp_path))
    assert quiet.runtime_env()["env_vars"][VERBOSE_ENV] == "0" and not quiet.verbose
    assert loud.runtime_env()["env_vars"][VERBOSE_ENV] == "1" and loud.verbose


def test_failure_looking_lines_catch_the_noise_a_run_used_to_print():
    noise = ("2026-12-01 WARNING authentication_token_setup.py:85 -- Token authentication is enabled\n"
             "E0000 cuda_platform.cc:52] failed call to cuInit: INTERNAL\n"
             "Warning: The Ray cluster currently does not have any available CPUs. The Dataset job will hang\n"
             "[1/7] generating data  (0.0s)\n")
    assert len(failure_looking_lines(noise)) == 3
