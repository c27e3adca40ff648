"""A `dream serve` server in this process, on a free port of 127.0.0.1, for the tests/serve/test_serve_*.py modules."""

import contextlib
import io
import json
import threading
import time

import pytest

pytest.importorskip("fastapi", reason="the serve extra (pip install 'dream-dalle2[serve]') is not installed")

import torch  # noqa: E402
import uvicorn  # noqa: E402
from PIL import Image  # noqa: E402

from dream_cli.output import SETTINGS_CHUNK  # noqa: E402
from dream_cli.serve import bind, connection_limit  # noqa: E402
from dream_cli.serve.app import Auth, Server, create_app  # noqa: E402
from dream_cli.serve.engine import Engine  # noqa: E402
from dream_cli.serve.models import load_models  # noqa: E402
from dream_cli.serve.results import ResultStore  # noqa: E402

FAST = {"steps": [2, 2], "prior_steps": 2}  # the bundled shapes model in a fraction of a second per image


def shapes_models(*specs, overrides=None):
    """Loaded models; by default with the server's own defaults set to FAST (`dream serve --steps 2,2 --prior-steps 2`)."""
    fast = {"steps": (2, 2), "prior_steps": 2}
    return load_models(specs or ("shapes",), torch.device("cpu"), torch.float32, "fp32", offload=False, quiet=True,
                       overrides=fast if overrides is None else overrides)


@contextlib.contextmanager
def running_server(models, *, max_queue=16, max_batch=8, outdir=None, auth=None, cors=(), url_expiry=3600):
    """(base URL, Server) of a server running in a background thread until the block ends."""
    srv = Server(models, Engine(max_queue, max_batch).start(), ResultStore(ttl=url_expiry), outdir, auth or Auth())
    app = create_app(srv, tuple(cors))
    sock = bind("127.0.0.1", 0)
    config = uvicorn.Config(app, log_level="warning", access_log=False, ws="none",
                            limit_concurrency=connection_limit(max_queue), timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "the test server did not start"
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", srv
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def png_info(data: bytes) -> tuple[dict, bytes]:
    """(the dream-dalle2 settings chunk, RGB pixels) of PNG bytes."""
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return json.loads(img.text[SETTINGS_CHUNK]), img.convert("RGB").tobytes()


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
