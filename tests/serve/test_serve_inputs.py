"""Bad input to `dream serve`: every case answered 4xx naming the field and what is accepted, no traceback anywhere."""

import base64
import json
import logging

import pytest
from helpers.serve_helpers import png_bytes, running_server, shapes_models
from PIL import Image

from dream_cli.serve.app import Auth

requests = pytest.importorskip("requests")

KEY = "test-key"
BEARER = {"Authorization": f"Bearer {KEY}"}
GOOD = {"prompt": "a red circle", "width": 64, "height": 64, "steps": [2, 2], "prior_steps": 2}
PNG = base64.b64encode(png_bytes(Image.new("RGB", (64, 64), (0, 0, 200)))).decode()


def bomb() -> bytes:
    """A real PNG (written by PIL) that is tiny on disk and 8192 x 8192 when decoded."""
    return png_bytes(Image.new("1", (8192, 8192)))


def deep_json() -> str:
    return "[" * 200_000 + "]" * 200_000


# (case, method, path, what is sent, expected status, the field the answer must name)
CASES = [
    ("prompt of the wrong type", "POST", "/sdapi/v1/txt2img", {"json": {**GOOD, "prompt": 123}}, 422, "prompt"),
    ("10 MB prompt", "POST", "/sdapi/v1/txt2img", {"json": {**GOOD, "prompt": "a" * 10_000_000}}, 422, "prompt"),
    ("negative prompt too long", "POST", "/sdapi/v1/txt2img", {"json": {**GOOD, "negative_prompt": "b" * 3000}}, 422, "negative_prompt"),
    ("blank prompt", "POST", "/sdapi/v1/txt2img", {"json": {**GOOD, "prompt": "   "}}, 422, "prompt"),
    ("steps a word", "POST", "/sdapi/v1/txt2img", {"json": {**GOOD, "steps": "many"}}, 422, "steps"),
    ("steps 0", "POST", "/sdapi/v1/txt2img", {"json": {**GOOD, "steps": 0}}, 422, "steps"),
    ("steps 100000", "POST", "/sdapi/v1/txt2img", {"json": {**GOOD, "steps": 100_000}}, 422, "steps"),
    ("steps for 3 stages of 2", "POST", "/sdapi/v1/txt2img", {"json": {**GOOD, "steps": [2, 2, 2]}}, 422, "steps"),
    ("guidance 1e308", "POST", "/sdapi/v1/txt2img", {"json": {**GOOD, "cfg_scale": 1e308}}, 422, "cfg_scale"),
    ("guidance NaN", "POST", "/sdapi/v1/txt2img", {"data": json.dumps({**GOOD, "cfg_scale": "NaN"}),
                                                   "headers": {"Content-Type": "application/json"}}, 422, "cfg_scale"),
    ("negative guidance", "POST", "/sdapi/v1/txt2img", {"json": {**GOOD, "cfg_scale": -1}}, 422, "cfg_scale"),
    ("prior steps 0", "POST", "/sdapi/v1/txt2img", {"json": {**GOOD, "prior_steps": 0}}, 422, "prior_steps"),
    ("seed -5", "POST", "/sdapi/v1/txt2img", {"json": {**GOOD, "seed": -5}}, 422, "seed"),
    ("seed 2**64", "POST", "/sdapi/v1/txt2img", {"json": {**GOOD, "seed": 2**64}}, 422, "seed"),
    ("seed a string", "POST", "/sdapi/v1/txt2img", {"json": {**GOOD, "seed": "abc"}}, 422, "seed"),
    ("batch_size 0", "POST", "/sdapi/v1/txt2img", {"json": {**GOOD, "batch_size": 0}}, 422, "batch_size"),
    ("batch_size 1000", "POST", "/sdapi/v1/txt2img", {"json": {**GOOD, "batch_size": 1000}}, 422, "batch_size"),
    ("batch_size x n_iter = 25", "POST", "/sdapi/v1/txt2img", {"json": {**GOOD, "batch_size": 5, "n_iter": 5}}, 422, "batch_size"),
    ("4096 x 4096 image", "POST", "/sdapi/v1/txt2img", {"json": {**GOOD, "width": 4096, "height": 4096}}, 422, "width"),
    ("negative width", "POST", "/sdapi/v1/txt2img", {"json": {**GOOD, "width": -1}}, 422, "width"),
    ("unknown sampler", "POST", "/sdapi/v1/txt2img", {"json": {**GOOD, "sampler_name": "warp drive"}}, 422, "sampler_name"),
    ("path-like model", "POST", "/sdapi/v1/txt2img",
     {"json": {**GOOD, "override_settings": {"sd_model_checkpoint": "../../etc/passwd"}}}, 422, "override_settings.sd_model_checkpoint"),
    ("a Hub repo as model", "POST", "/sdapi/v1/txt2img",
     {"json": {**GOOD, "override_settings": {"sd_model_checkpoint": "kakaobrain/karlo-v1-alpha"}}}, 422,
     "override_settings.sd_model_checkpoint"),
    ("options: a folder as model", "POST", "/sdapi/v1/options", {"json": {"sd_model_checkpoint": "/tmp/model"}}, 422, "sd_model_checkpoint"),
    ("body not JSON", "POST", "/sdapi/v1/txt2img", {"data": "{", "headers": {"Content-Type": "application/json"}}, 422, "body"),
    ("body a JSON list", "POST", "/sdapi/v1/txt2img", {"json": [1, 2]}, 422, "body"),
    ("JSON nested 200000 deep", "POST", "/sdapi/v1/txt2img", {"data": deep_json(), "headers": {"Content-Type": "application/json"}},
     422, "body"),
    ("30 MB body", "POST", "/sdapi/v1/txt2img", {"data": b"x" * (30 * 2**20), "headers": {"Content-Type": "application/json"}}, 413, None),
    ("30 MB body, streamed", "POST", "/v1/images/generations", {"data": (b"x" * 2**20 for _ in range(30)),
                                                               "headers": {"Content-Type": "application/json"}}, 413, None),
    ("img2img without init_images", "POST", "/sdapi/v1/img2img", {"json": GOOD}, 422, "init_images"),
    ("img2img two init images", "POST", "/sdapi/v1/img2img", {"json": {**GOOD, "init_images": [PNG, PNG]}}, 422, "init_images"),
    ("img2img garbage base64", "POST", "/sdapi/v1/img2img", {"json": {**GOOD, "init_images": ["!!not*base64!!"]}}, 422, "init_images"),
    ("img2img base64 of text", "POST", "/sdapi/v1/img2img",
     {"json": {**GOOD, "init_images": [base64.b64encode(b"hello").decode()]}}, 422, "init_images"),
    ("img2img PNG bomb (8192 x 8192)", "POST", "/sdapi/v1/img2img",
     {"json": {**GOOD, "init_images": [base64.b64encode(bomb()).decode()]}}, 422, "init_images"),
    ("img2img garbage mask", "POST", "/sdapi/v1/img2img", {"json": {**GOOD, "init_images": [PNG], "mask": "@@@"}}, 422, "mask"),
    ("img2img strength 2", "POST", "/sdapi/v1/img2img", {"json": {**GOOD, "init_images": [PNG], "denoising_strength": 2}}, 422,
     "denoising_strength"),
    ("inpainting with DPM++", "POST", "/sdapi/v1/img2img",
     {"json": {**GOOD, "init_images": [PNG], "mask": PNG, "sampler_name": "DPM++ 2M"}}, 422, "sampler_name"),
    ("OpenAI: no prompt", "POST", "/v1/images/generations", {"json": {"n": 1}}, 400, "prompt"),
    ("OpenAI: 1001-character prompt", "POST", "/v1/images/generations", {"json": {"prompt": "c" * 1001}}, 400, "prompt"),
    ("OpenAI: n 11", "POST", "/v1/images/generations", {"json": {"prompt": "x", "n": 11}}, 400, "n"),
    ("OpenAI: n a word", "POST", "/v1/images/generations", {"json": {"prompt": "x", "n": "two"}}, 400, "n"),
    ("OpenAI: size 'big'", "POST", "/v1/images/generations", {"json": {"prompt": "x", "size": "big"}}, 400, "size"),
    ("OpenAI: size 1024x1024", "POST", "/v1/images/generations", {"json": {"prompt": "x", "size": "1024x1024"}}, 400, "size"),
    ("OpenAI: unknown model", "POST", "/v1/images/generations", {"json": {"prompt": "x", "model": "dall-e-3"}}, 400, "model"),
    ("OpenAI: path as model", "POST", "/v1/images/generations", {"json": {"prompt": "x", "model": "/etc/passwd"}}, 400, "model"),
    ("OpenAI: response_format png", "POST", "/v1/images/generations", {"json": {"prompt": "x", "response_format": "png"}}, 400,
     "response_format"),
    ("OpenAI variation without image", "POST", "/v1/images/variations", {"data": {"n": "1"}}, 400, "image"),
    ("OpenAI variation of garbage", "POST", "/v1/images/variations", {"files": {"image": ("x.png", b"garbage", "image/png")}}, 400,
     "image"),
    ("OpenAI variation of a bomb", "POST", "/v1/images/variations", {"files": {"image": ("b.png", bomb(), "image/png")}}, 400, "image"),
    ("page: vary an unknown result", "POST", "/dream/v1/variations", {"json": {**GOOD, "source": "nope"}}, 422, "source"),
]

AUTH_CASES = [
    ("no credentials (A1111)", "/sdapi/v1/options", {}, 401, "Basic"),
    ("wrong Basic password", "/sdapi/v1/options", {"Authorization": "Basic " + base64.b64encode(b"user:wrong").decode()}, 401, "Basic"),
    ("malformed Basic header", "/sdapi/v1/options", {"Authorization": "Basic %%%"}, 401, "Basic"),
    ("wrong Bearer key (OpenAI)", "/v1/images/generations", {"Authorization": "Bearer nope"}, 401, "Bearer"),
]


@pytest.fixture(scope="module")
def models():
    return shapes_models()


@pytest.fixture(scope="module")
def served(models):
    with running_server(models, auth=Auth(users={"user": "pass"}, key=KEY)) as (url, srv):
        yield url, srv


def send(url, method, path, sent, headers=BEARER):
    kwargs = dict(sent)
    kwargs["headers"] = {**headers, **kwargs.get("headers", {})}
    return requests.request(method, url + path, timeout=60, **kwargs)


@pytest.mark.parametrize("case, method, path, sent, status, field", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_naming_the_field(served, caplog, case, method, path, sent, status, field):
    url, srv = served
    with caplog.at_level(logging.INFO):
        answer = send(url, method, path, sent)
    assert answer.status_code == status, answer.text[:500]
    assert "Traceback" not in answer.text and len(answer.text) < 2000  # one line, no echo of a huge value
    body = answer.json()
    if path.startswith("/v1/"):
        assert body["error"]["param"] == field and body["error"]["message"]
        assert field is None or field in body["error"]["message"]
    elif status == 422:
        assert (".".join(body["detail"][0]["loc"][1:]) or "body") == field and body["detail"][0]["msg"]
    assert not any(r.exc_info or "Traceback" in r.getMessage() for r in caplog.records)
    assert srv.engine.snapshot()["queued"] == 0  # nothing bad reached the queue


def test_accepted_values_are_named(served):
    url, _ = served
    detail = send(url, "POST", "/sdapi/v1/txt2img", {"json": {**GOOD, "steps": 0}}).json()["detail"][0]
    assert "accepted: an integer 1..150" in detail["msg"]
    detail = send(url, "POST", "/sdapi/v1/txt2img", {"json": {**GOOD, "width": 512, "height": 512}}).json()["detail"][0]
    assert "512x512: model 'shapes' does not make it; accepted: 64x64" in detail["msg"]
    error = send(url, "POST", "/v1/images/generations", {"json": {"prompt": "x", "model": "dall-e-3"}}).json()["error"]
    assert "accepted: shapes" in error["message"]
    error = send(url, "POST", "/v1/images/generations", {"json": {"prompt": "c" * 1001}}).json()["error"]
    assert error["message"].endswith("accepted: a string of at most 1000 characters")


@pytest.mark.parametrize("case, path, headers, status, challenge", AUTH_CASES, ids=[c[0] for c in AUTH_CASES])
def test_credentials_are_required(served, case, path, headers, status, challenge):
    url, _ = served
    answer = requests.get(url + path, headers=headers, timeout=10) if path.startswith("/sdapi") else \
        requests.post(url + path, json={"prompt": "x"}, headers=headers, timeout=10)
    assert answer.status_code == status and answer.headers["www-authenticate"].startswith(challenge)
    if path.startswith("/v1/"):
        assert answer.json()["error"]["code"] == "invalid_api_key"


def test_either_credential_works_and_image_urls_need_none(served):
    url, _ = served
    basic = {"Authorization": "Basic " + base64.b64encode(b"user:pass").decode()}
    assert requests.get(url + "/sdapi/v1/sd-models", headers=basic, timeout=10).status_code == 200
    made = requests.post(url + "/v1/images/generations", json={"prompt": "a red circle"}, headers=BEARER, timeout=60)
    assert made.status_code == 200
    link = made.json()["data"][0]["url"]
    assert requests.get(link, timeout=10).status_code == 200  # an unguessable, expiring URL, like OpenAI's
    assert requests.get(url + "/files/not-a-result.png", timeout=10).status_code == 404
    assert requests.get(url + "/", timeout=10).status_code == 401  # with --api-auth the page asks the browser for it


def test_no_cors_unless_an_origin_is_named(models):
    preflight = {"Origin": "http://elsewhere.example", "Access-Control-Request-Method": "POST"}
    with running_server(models) as (url, _):
        answer = requests.options(url + "/sdapi/v1/txt2img", headers=preflight, timeout=10)
        assert "access-control-allow-origin" not in answer.headers
    with running_server(models, cors=("http://elsewhere.example",)) as (url, _):
        answer = requests.options(url + "/sdapi/v1/txt2img", headers=preflight, timeout=10)
        assert answer.headers["access-control-allow-origin"] == "http://elsewhere.example"
        get = requests.get(url + "/sdapi/v1/options", headers={"Origin": "http://other.example"}, timeout=10)
        assert "access-control-allow-origin" not in get.headers

