"""`dream serve`: load models once and serve them over HTTP (A1111's API, OpenAI's Images API, a web page).

The server needs the `serve` extra (`pip install 'dream-dalle2[serve]'`): FastAPI, uvicorn, python-multipart.
Nothing here imports them until the command runs, so `dream --help` works without the extra.
"""

from __future__ import annotations

import ipaddress
import signal
import socket
from pathlib import Path

import click

from dalle2_core.choices import DEFAULT_MODEL, PRECISIONS
from dream_cli.errors import DreamError, one_line
from dream_cli.sampling import DEVICES, NumberList, check_outdir, pick_device, pick_dtype, surface_warnings

DEFAULT_PORT = 7860  # A1111's, where its clients look first


def connection_limit(max_queue: int) -> int:
    """uvicorn's own limit on open connections (past it: a bare 503): far above what the queue admits, so that
    clients meet the queue's 503 with Retry-After, and requests past the queue are answered at once."""
    return max_queue + 1000


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_api_auth(value: str | None) -> dict[str, str]:
    """`user:pass[,user:pass...]` (A1111's --api-auth) as {user: password}."""
    users = {}
    for pair in (value or "").split(",") if value else []:
        user, sep, password = pair.partition(":")
        if not sep or not user or not password:
            raise click.BadParameter("expected USER:PASSWORD[,USER:PASSWORD...] with non-empty names and passwords",
                                     param_hint="--api-auth")
        users[user] = password
    return users


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, taken before any model loads: a port in use fails at once, in one line."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise DreamError(f"cannot listen on {host}:{port}: {err.strerror or one_line(err)}") from None
    sock.set_inheritable(True)
    return sock


def log_config(quiet: bool) -> dict:
    """uvicorn's logging, with this package's one-line errors on the same handler; `quiet` drops the access log."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["dream.serve"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    if quiet:
        config["loggers"]["uvicorn.access"]["level"] = "WARNING"
    return config


def one_line_warnings() -> None:
    """Warnings while serving (a prompt cut to CLIP's context, ...) as one log line each, never a source excerpt."""
    import logging
    import warnings

    log = logging.getLogger("dream.serve")
    warnings.showwarning = lambda message, category, *_, **__: log.warning("%s: %s", category.__name__, one_line(message))


def run_server(app, sock: socket.socket, quiet: bool = False):
    """Serve `app` on `sock` until SIGINT / SIGTERM; the running job is cancelled and the call returns normally."""
    import asyncio

    import uvicorn

    one_line_warnings()
    srv = app.state.dream

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):  # stop taking jobs at once, so waiting requests are answered and close
            try:
                asyncio.get_running_loop().call_soon_threadsafe(srv.engine.stop)
            except RuntimeError:
                srv.engine.stop()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, log_config=log_config(quiet), access_log=not quiet, timeout_graceful_shutdown=10,
                            limit_concurrency=connection_limit(srv.engine.max_queue), ws="none", lifespan="on")
    server = Server(config)
    # uvicorn raises the signal again once it has shut down: these handlers take it, so the process exits 0
    previous = {s: signal.signal(s, lambda *_: None) for s in (signal.SIGINT, signal.SIGTERM)} if _main_thread() else {}
    try:
        server.run(sockets=[sock])
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return server


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


@click.command("serve")
@click.option("--model", "model_specs", multiple=True, metavar="[NAME=]MODEL",
              help="A model to serve (repeat for more; the first is the default): shapes, kandinsky, karlo, laion, a folder or a "
                   f"Hub repo, optionally named NAME=MODEL. [default: $DREAM_MODEL, else {DEFAULT_MODEL}]")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; another than loopback needs --api-auth or --api-key.")
@click.option("--port", type=click.IntRange(0, 65535), default=DEFAULT_PORT, show_default=True,
              help="Port to listen on (0: any free port).")
@click.option("--api-auth", envvar="DREAM_API_AUTH", metavar="USER:PASS[,...]",
              help="HTTP Basic credentials every request must carry (A1111's flag). [env DREAM_API_AUTH]")
@click.option("--api-key", envvar="DREAM_API_KEY", metavar="KEY",
              help="A Bearer key requests may carry instead (what OpenAI clients send). [env DREAM_API_KEY]")
@click.option("--outdir", type=click.Path(path_type=Path, file_okay=False),
              help="Also write every image here (never over an existing file).")
@click.option("--max-queue", type=click.IntRange(1, 10_000), default=16, show_default=True,
              help="Requests that may wait; past it the answer is 503 with Retry-After.")
@click.option("--max-batch", type=click.IntRange(1, 64), default=8, show_default=True,
              help="Images per forward pass: queued text-to-image requests with the same settings share one.")
@click.option("--cors-origin", multiple=True, metavar="ORIGIN",
              help="Allow browser pages from ORIGIN to call the APIs (repeatable; none by default).")
@click.option("--url-expiry", type=click.IntRange(60, 7 * 86400), default=3600, show_default=True,
              help="Seconds an image URL (response_format=url, the page's gallery) stays valid.")
@click.option("--steps", type=NumberList(int, minimum=1),
              help="Decoder steps for requests that give none (OpenAI's API has no field for them). [model default]")
@click.option("--prior-steps", type=click.IntRange(min=1), help="Prior steps for requests that give none. [model default]")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True, help="Where to sample.")
@click.option("--precision", type=click.Choice(list(PRECISIONS)), default="fp32", show_default=True, help="Weights and activations.")
@click.option("--offload", is_flag=True, help="Keep the networks on the CPU and move each to --device only while it runs.")
@click.option("-q", "--quiet", is_flag=True, help="No model-loading progress and no access log.")
def serve(model_specs, host, port, api_auth, api_key, outdir, max_queue, max_batch, cors_origin, url_expiry, steps, prior_steps,
          device, precision, offload, quiet) -> None:
    """Serve models over HTTP: AUTOMATIC1111's API (/sdapi/v1), OpenAI's Images API (/v1/images) and a web page (/)."""
    try:
        import fastapi  # noqa: F401
        import python_multipart  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as err:
        raise DreamError(f"dream serve needs the serve extra ({err.name} is missing): pip install 'dream-dalle2[serve]'") from None
    from dalle2_core.hub import default_model_spec
    from dream_cli.serve.app import Auth, Server, create_app
    from dream_cli.serve.engine import Engine
    from dream_cli.serve.models import load_models
    from dream_cli.serve.results import ResultStore

    auth = Auth(parse_api_auth(api_auth), api_key or None)
    if not _loopback(host) and not auth.required:
        raise click.UsageError(f"listening on {host} opens the models to the network: give --api-auth USER:PASS or --api-key KEY")
    torch_device = pick_device(device)
    dtype = pick_dtype(precision, torch_device)
    outdir = check_outdir(outdir) if outdir is not None else None
    sock = bind(host, port)
    try:
        with surface_warnings():
            overrides = {k: v for k, v in (("steps", steps), ("prior_steps", prior_steps)) if v is not None}
            models = load_models(model_specs or (default_model_spec(),), torch_device, dtype, precision, offload, quiet, overrides)
        srv = Server(models, Engine(max_queue, max_batch).start(), ResultStore(ttl=url_expiry), outdir, auth)
        app = create_app(srv, tuple(cors_origin))
        shown_host = f"[{host}]" if ":" in host else host
        click.echo(f"dream serve: http://{shown_host}:{sock.getsockname()[1]}/  models: {', '.join(models)}", err=True)
        run_server(app, sock, quiet)
    finally:
        sock.close()


__all__ = ["serve"]
