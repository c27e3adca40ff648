"""`dream serve` as a process: start-up refusals, SIGTERM and Ctrl-C while a job runs (exit 0, no traceback)."""

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from helpers.cli_helpers import dream

pytest.importorskip("fastapi", reason="the serve extra (pip install 'dream-dalle2[serve]') is not installed")
requests = pytest.importorskip("requests")


def test_listening_beyond_loopback_needs_credentials():
    result = dream("serve", "--model", "shapes", "--host", "0.0.0.0")
    assert result.exit_code == 2 and "--api-auth USER:PASS or --api-key KEY" in result.output
    result = dream("serve", "--model", "shapes", "--api-auth", "nopassword")
    assert result.exit_code == 2 and "USER:PASSWORD" in result.output


def test_a_port_in_use_fails_in_one_line_before_loading():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = dream("serve", "--model", "shapes", "--port", port)
    assert result.exit_code == 1 and f"cannot listen on 127.0.0.1:{port}" in result.output and "Traceback" not in result.output


def start(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "dream_cli", "serve", "--model", "shapes", "--port", "0", "--outdir", str(tmp_path)],
                               stderr=subprocess.PIPE, text=True, env=env)
    lines = []
    for line in process.stderr:
        lines.append(line)
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        if match:
            break
    assert match, "".join(lines)
    url = f"http://127.0.0.1:{match[1]}"
    deadline = time.monotonic() + 60
    while True:
        try:
            requests.get(f"{url}/sdapi/v1/options", timeout=2)
            break
        except requests.exceptions.ConnectionError:
            assert time.monotonic() < deadline, "the server did not answer"
            time.sleep(0.1)
    return process, url, lines


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_a_signal_cancels_the_running_job_and_exits_0(tmp_path, sig):
    process, url, lines = start(tmp_path)
    answer = {}
    body = {"prompt": "a red circle", "seed": 1, "width": 64, "height": 64, "steps": [150, 150]}
    waiter = threading.Thread(target=lambda: answer.update(r=requests.post(f"{url}/sdapi/v1/txt2img", json=body, timeout=60)))
    waiter.start()
    deadline = time.monotonic() + 30
    while requests.get(f"{url}/sdapi/v1/progress", timeout=5).json()["state"]["sampling_steps"] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(sig)
    waiter.join(30)
    rest = process.stderr.read()
    code = process.wait(30)
    log = "".join(lines) + rest
    assert code == 0, log
    assert answer["r"].status_code == 503 and answer["r"].json()["detail"] == "the server is shutting down"
    assert "Traceback" not in log and "Finished server process" in log
    assert list(tmp_path.iterdir()) == []  # the cancelled job wrote nothing


def test_server_defaults_are_checked_against_every_model():
    result = dream("serve", "--model", "shapes", "--port", 0, "--steps", "2,2,2", "-q")
    assert result.exit_code == 2 and "--steps" in result.output and "2 decoder stage(s)" in result.output
