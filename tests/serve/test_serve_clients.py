"""`dream serve` driven by clients nobody here wrote: the `webuiapi` package, the `openai` SDK, Open WebUI's requests."""

import base64
import io
import json
import threading
import time

import numpy as np
import pytest
from helpers.cli_helpers import dream
from helpers.serve_helpers import FAST, png_info, running_server, shapes_models
from PIL import Image

from dream_cli.output import SETTINGS_CHUNK, read_png_text
from dream_cli.serve.app import Auth

webuiapi = pytest.importorskip("webuiapi")
openai = pytest.importorskip("openai")
requests = pytest.importorskip("requests")

PROMPT = "a large red circle on the left on a blue background"


@pytest.fixture(scope="module")
def models():
    return shapes_models("shapes", "second=shapes")  # the same weights under two names: model switching


@pytest.fixture(scope="module")
def served(models, tmp_path_factory):
    outdir = tmp_path_factory.mktemp("served")
    with running_server(models, outdir=outdir) as (url, srv):
        yield url, srv, outdir


def client(url, **kw):
    host, port = url.removeprefix("http://").split(":")
    return webuiapi.WebUIApi(host=host, port=int(port), **kw)


def test_webuiapi_txt2img_gives_the_pixels_and_metadata_dream_writes(served, tmp_path):
    url, srv, outdir = served
    api = client(url, sampler="DPM++ 2M SDE", steps=2)
    result = api.txt2img(prompt=PROMPT, seed=7, batch_size=2, width=64, height=64, cfg_scale=5, steps=[2, 2])
    assert len(result.images) == 2 and result.info["all_seeds"] == [7, 8] and result.info["sd_model_name"] == "shapes"
    assert result.info["steps"] == 2 and result.info["sampler_name"] == "DPM++ 2M SDE"

    # the same prompt, seed and settings through `dream` (the prior at the server's default, 2 steps)
    cli = dream("--model", "shapes", "--seed", 7, "-n", 2, "--steps", "2,2", "--prior-steps", 2, "--cond-scale", "5,1", "--sampler", "dpmpp_sde",
                "--outdir", tmp_path, "-q", PROMPT)
    assert cli.exit_code == 0, cli.output
    files = sorted(tmp_path.glob("*-7-*.png"))
    assert len(files) == 2
    for i, (image, written) in enumerate(zip(result.images, files)):
        with Image.open(written) as expected:
            assert image.convert("RGB").tobytes() == expected.convert("RGB").tobytes()  # same process, same batch: bit-equal
        assert image.info["parameters"] == read_png_text(written)["parameters"]  # A1111's infotext exactly as dream writes it
        assert result.info["infotexts"][i] == image.info["parameters"]
    # the server also wrote them to its --outdir, under dream's names
    assert sorted(p.name for p in outdir.glob("*-7-*.png")) == [p.name for p in files]
    info = json.loads(result.images[1].info[SETTINGS_CHUNK])
    assert info["seed"] == 8 and info["prompt"] == PROMPT and "model_path" not in info


def test_webuiapi_img2img_with_a_mask_keeps_the_unmasked_pixels(served):
    url, _, _ = served
    api = client(url)
    source = np.zeros((64, 64, 3), np.uint8)
    source[:, :, 2] = 200  # blue
    source[8:24, 8:24] = (220, 30, 30)
    mask = np.zeros((64, 64), np.uint8)
    mask[32:, :] = 255  # white = regenerate the lower half
    result = api.img2img(images=[Image.fromarray(source)], mask_image=Image.fromarray(mask), prompt=PROMPT, seed=3,
                         width=64, height=64, steps=[2, 2], cfg_scale=5)
    out = np.asarray(result.images[0].convert("RGB"))
    assert out.shape == (64, 64, 3)
    assert np.array_equal(out[:32], source[:32])  # RePaint keeps what the mask leaves, pixel for pixel
    assert not np.array_equal(out[32:], source[32:])
    assert result.info["all_seeds"] == [3]
    # inverted mask (A1111's inpainting_mask_invert=1): black is regenerated, so the lower half is kept
    inverted = api.img2img(images=[Image.fromarray(source)], mask_image=Image.fromarray(mask), inpainting_mask_invert=1,
                           prompt=PROMPT, seed=3, width=64, height=64, steps=[2, 2])
    assert np.array_equal(np.asarray(inverted.images[0].convert("RGB"))[32:], source[32:])
    # img2img without a mask: denoising_strength is recorded
    plain = api.img2img(images=[Image.fromarray(source)], prompt=PROMPT, seed=3, width=64, height=64, steps=[4, 4],
                        denoising_strength=0.5)
    assert plain.info["denoising_strength"] == 0.5 and "Denoising strength: 0.5" in plain.info["infotexts"][0]


def test_webuiapi_lists_models_switches_through_options_and_interrupts(served):
    url, srv, _ = served
    api = client(url)
    assert api.util_get_model_names() == ["second", "shapes"]
    assert {m["hash"] for m in api.get_sd_models()} == {srv.models["shapes"].short_hash}
    api.util_set_model("second")
    assert api.util_get_current_model() == "second"
    switched = api.txt2img(prompt=PROMPT, seed=1, width=64, height=64, steps=[2, 2])
    assert switched.info["sd_model_name"] == "second"
    api.util_set_model("shapes")
    assert {s["name"] for s in api.get_samplers()} == {"DDPM", "DDIM", "DPM++ 2M", "DPM++ 2M SDE"}

    answer = {}
    worker = threading.Thread(target=lambda: answer.update(r=api.txt2img(prompt=PROMPT, seed=2, width=64, height=64, steps=[150, 150])))
    worker.start()
    progress = api.get_progress()
    deadline = time.monotonic() + 30
    while progress["state"]["sampling_steps"] == 0 or progress["current_image"] is None:
        assert time.monotonic() < deadline, progress
        time.sleep(0.05)
        progress = api.get_progress()
    assert 0 < progress["progress"] < 1 and progress["state"]["job_count"] == 1 and progress["textinfo"].startswith("unet")
    with Image.open(io.BytesIO(base64.b64decode(progress["current_image"]))) as preview:
        assert preview.size in ((32, 32), (64, 64))  # the running stage's current image
    started = time.monotonic()
    api.interrupt()
    worker.join(30)
    assert time.monotonic() - started < 10  # stopped at the next step, not after 300 of them
    assert answer["r"].images == [] and answer["r"].info["interrupted"] is True
    assert api.get_progress()["state"]["job_count"] == 0


def test_openai_sdk_generates_b64_json_and_url_variations(served):
    url, srv, _ = served
    sdk = openai.OpenAI(base_url=f"{url}/v1", api_key="not-checked-without---api-key", max_retries=0)
    made = sdk.images.generate(model="shapes", prompt=PROMPT, n=2, size="64x64", response_format="b64_json")
    assert len(made.data) == 2 and made.created > 0
    info, pixels = png_info(base64.b64decode(made.data[0].b64_json))
    assert info["prompt"] == PROMPT and info["size"] == [64, 64] and len(pixels) == 64 * 64 * 3
    assert png_info(base64.b64decode(made.data[1].b64_json))[0]["seed"] == info["seed"] + 1

    varied = sdk.images.create_variation(image=("circle.png", base64.b64decode(made.data[0].b64_json), "image/png"), n=1,
                                         response_format="url", size="64x64")
    link = varied.data[0].url
    assert link.startswith(f"{url}/files/")
    got = requests.get(link, timeout=10)
    assert got.status_code == 200 and got.headers["content-type"] == "image/png"
    assert png_info(got.content)[0]["kind"] == "variations"
    # URLs expire
    srv.store.get(link.rsplit("/", 1)[1].removesuffix(".png")).expires = time.time() - 1
    assert requests.get(link, timeout=10).status_code == 404

    with pytest.raises(openai.BadRequestError) as refused:
        sdk.images.generate(prompt=PROMPT, size="1024x1024")
    assert refused.value.status_code == 400 and refused.value.body["param"] == "size" and "64x64" in refused.value.body["message"]


def test_open_webui_request_sequence_with_basic_auth(models):
    """Open WebUI's automatic1111 engine: options -> sd-models -> options (model switch) -> txt2img, with its auth header."""
    with running_server(models, auth=Auth(users={"webui": "s3cret"})) as (url, _):
        header = {"authorization": "Basic " + base64.b64encode(b"webui:s3cret").decode()}
        api = f"{url}/sdapi/v1"
        options = requests.get(f"{api}/options", headers=header, timeout=10).json()
        assert options["sd_model_checkpoint"] == "shapes"
        listed = [{"id": m["title"], "name": m["model_name"]} for m in requests.get(f"{api}/sd-models", headers=header, timeout=10).json()]
        assert [m["id"] for m in listed] == ["shapes", "second"]
        options["sd_model_checkpoint"] = "second"
        assert requests.post(f"{api}/options", json=options, headers=header, timeout=10).status_code == 200
        body = {"prompt": PROMPT, "batch_size": 1, "width": 64, "height": 64, "steps": 2, "negative_prompt": "green"}
        answer = requests.post(f"{api}/txt2img", json={**body, **FAST}, headers=header, timeout=60)
        assert answer.status_code == 200
        image = base64.b64decode(answer.json()["images"][0])
        info, _ = png_info(image)
        assert info["negative_prompt"] == "green" and info["steps"] == [2, 2] and answer.json()["parameters"]["prompt"] == PROMPT
        wrong = requests.get(f"{api}/options", headers={"authorization": "Basic " + base64.b64encode(b"webui:nope").decode()}, timeout=10)
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"].startswith("Basic")
