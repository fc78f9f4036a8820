"""The playground (GET /) in a real browser against the real server: generation with its
progress bar, the gallery, inpainting with a painted mask (the unpainted pixels kept
exactly), variations, interpolations, text diffs (each with per-step progress and stages
named for people), what the model draws (examples, random captions), the server's errors,
API keys, cancel, and the phone layout. Every test ends with no console errors (see
conftest.py)."""

from __future__ import annotations

import base64
import fnmatch
import io
import json
import re

import httpx
import numpy as np
import pytest
from PIL import Image, ImageFilter

from server.api.playground import ASSETS, ROOT
from tests.server.conftest import FAST, KEY, REPO, ServerProc, png
from tools.shapes import ATTRIBUTES, parse_caption

from .conftest import Tab

TIMEOUT_MS = 30_000
MARGIN = 2  # px: the pixels this close to the painted area are not compared


# ---- helpers ---------------------------------------------------------------------------

def fast(tab: Tab, **fields) -> None:
    """Few steps through the Advanced section (every operation uses these settings)."""
    tab.page.click("#advanced summary")
    for name, value in {**FAST, **fields}.items():
        tab.page.fill(f"#{name}", str(value))


def set_range(tab: Tab, selector: str, value: float) -> None:
    tab.page.eval_on_selector(selector, "(el, v) => { el.value = v; el.dispatchEvent(new Event('input')); }", value)


def cards(tab: Tab):
    return tab.page.locator("#gallery > li")


def run(tab: Tab, button: str, images: int) -> None:
    """Click a run button and wait for `images` new gallery entries (one per image; one per
    interpolation or text diff) or fail with the error shown."""
    before = cards(tab).count()
    tab.page.evaluate("window.__progress = []; window.__statuses = []")  # this run's only
    tab.page.click(button)
    tab.page.wait_for_function(
        "([want]) => document.querySelectorAll('#gallery > li').length >= want"
        " || !document.getElementById('error').hidden", arg=[before + images], timeout=TIMEOUT_MS)
    assert tab.page.locator("#error").is_hidden(), tab.page.inner_text("#error")
    assert cards(tab).count() == before + images


def error_after(tab: Tab, button: str) -> str:
    """Click a run button and return the error the page shows."""
    tab.page.click(button)
    tab.page.locator("#error").wait_for(state="visible", timeout=TIMEOUT_MS)
    return tab.page.inner_text("#error")


def generate(tab: Tab, n: int = 1, prompt: str = "a red circle") -> None:
    tab.page.fill("#prompt", prompt)
    tab.page.fill("#n", str(n))
    run(tab, "#generate", n)


def upload(tab: Tab, selector: str, data: bytes, name: str = "in.png") -> None:
    tab.page.set_input_files(selector, files=[{"name": name, "mimeType": "image/png", "buffer": data}])


def upload_source(tab: Tab, data: bytes) -> None:
    upload(tab, "#source-upload", data)
    tab.page.wait_for_function("() => document.getElementById('source-label').textContent.includes('uploaded')")


def download(tab: Tab, card_index: int) -> Image.Image:
    """The PNG behind a gallery card's Download link."""
    with tab.page.expect_download() as info:
        cards(tab).nth(card_index).get_by_role("link", name="Download").click()
    img = Image.open(info.value.path())
    img.load()
    return img


def frames_shown(tab: Tab) -> int:
    return tab.page.locator("#results .strip li").count()


def statuses(tab: Tab) -> list[str]:
    """Every status line shown so far."""
    return tab.page.evaluate("window.__statuses")


def progress_values(tab: Tab) -> list[float]:
    return [float(v) for v in tab.page.evaluate("window.__progress") if v is not None]


def assert_steps_shown(tab: Tab, *names: str) -> None:
    """The last run showed its steps: the bar moved, and the status named these stages in words."""
    moving = [v for v in progress_values(tab) if 0 < v < 1]
    assert moving and moving == sorted(moving), moving
    steps = [s for s in statuses(tab) if ": step " in s]
    for name in names:
        assert any(s.startswith(name) for s in steps), (name, steps)
    assert not any(re.search(r"\b(prior|decoder|upsampler)\b", s) for s in steps), steps


def in_view(tab: Tab, selector: str) -> bool:
    return tab.page.eval_on_selector(selector, """el => { const r = el.getBoundingClientRect();
        return r.top >= 0 && r.bottom <= window.innerHeight && r.height > 0; }""")


def painted_pixels(tab: Tab) -> int:
    return tab.page.eval_on_selector("#mask-canvas", """c => c.getContext("2d").getImageData(0, 0, c.width, c.height)
        .data.filter((v, i) => i % 4 === 3 && v > 0).length""")


def rgb(img: Image.Image, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(img.convert("RGB").resize(size, Image.Resampling.NEAREST))


# ---- tests -------------------------------------------------------------------------------

def test_generate_shows_progress_and_fills_the_gallery(open_page, playground: ServerProc) -> None:
    tab = open_page(playground)
    assert tab.page.locator("#size option").all_inner_texts() == ["32 × 32", "64 × 64"]
    assert tab.page.input_value("#size") == "32x32"  # the model's suggested size, not the largest
    fast(tab)
    tab.page.select_option("#size", "64x64")
    tab.page.fill("#seed", "7")
    generate(tab, n=2, prompt="a blue square")
    values = progress_values(tab)
    moving = [v for v in values if 0 < v < 1]
    assert len(set(moving)) >= 3 and values[-1] == 1, values  # prior, decoder, upsampler steps
    assert moving == sorted(moving), values
    assert_steps_shown(tab, "Choosing the image embedding", "Drawing 32 px", "Refining 32 → 64 px")
    assert tab.page.locator("#results img.slot").count() == 2
    newest = cards(tab).first
    params = json.loads(newest.locator("pre").text_content())
    assert params["prompt"] == "a blue square" and params["seed"] == 7 and params["size"] == "64x64"
    newest.get_by_text("Parameters", exact=True).click()
    newest.get_by_role("button", name="Copy").click()
    newest.get_by_text("Copied.").wait_for()
    assert json.loads(tab.page.evaluate("navigator.clipboard.readText()")) == params
    cards(tab).nth(1).get_by_role("button", name="Reuse").click()  # image 2: seed + 1
    assert tab.page.input_value("#seed") == "8" and tab.page.input_value("#n") == "1"
    assert tab.page.input_value("#prompt") == "a blue square" and tab.page.input_value("#decoder_steps") == "2"
    tab.page.reload()  # the gallery is kept in the browser, in the same order
    cards(tab).nth(1).wait_for()
    assert json.loads(cards(tab).first.locator("pre").text_content())["seed"] == 7


def test_inpainting_keeps_the_unpainted_pixels(open_page, playground: ServerProc) -> None:
    tab = open_page(playground)
    fast(tab)
    generate(tab)
    cards(tab).first.get_by_role("button", name="Edit").click()
    tab.page.wait_for_function("() => document.getElementById('edit-image').naturalWidth > 0"
                               " && document.getElementById('mask-canvas').getBoundingClientRect().height > 0")
    canvas = tab.page.locator("#mask-canvas")
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    tab.page.mouse.move(box["x"] + box["width"] * 0.2, box["y"] + box["height"] * 0.3)
    tab.page.mouse.down()
    tab.page.mouse.move(box["x"] + box["width"] * 0.55, box["y"] + box["height"] * 0.35, steps=6)
    tab.page.mouse.up()
    tab.page.fill("#edit-prompt", "a green square")
    run(tab, "#run-edit", 1)
    mask_url = tab.page.eval_on_selector("#mask-canvas", "c => c.toDataURL()")
    mask = Image.open(io.BytesIO(base64.b64decode(mask_url.split(",", 1)[1])))
    result, original = download(tab, 0), download(tab, 1)
    assert json.loads(cards(tab).first.locator("pre").text_content())["operation"] == "edit"
    painted = Image.fromarray((np.asarray(mask.getchannel("A")) > 0).astype(np.uint8) * 255)
    near = np.asarray(painted.resize(result.size, Image.Resampling.NEAREST)
                      .filter(ImageFilter.MaxFilter(2 * MARGIN + 1))) > 0
    assert 0 < near.mean() < 0.8
    assert np.array_equal(rgb(result, result.size)[~near], rgb(original, result.size)[~near])


def test_variations_of_an_upload(open_page, playground: ServerProc) -> None:
    tab = open_page(playground)
    fast(tab)
    upload_source(tab, png(64, seed=1))
    tab.page.fill("#var-n", "2")
    set_range(tab, "#var-eta", 0.5)
    assert tab.page.inner_text("#var-eta-out") == "0.5"
    tab.page.select_option("#size", "64x64")
    tab.page.fill("#decoder_steps", "6")  # enough steps that several progress events come
    run(tab, "#run-variations", 2)
    params = json.loads(cards(tab).first.locator("pre").text_content())
    assert params["operation"] == "variation" and params["eta"] == 0.5
    assert_steps_shown(tab, "Inverting the image", "Drawing 32 px")


def test_interpolations_show_the_asked_frames(open_page, playground: ServerProc) -> None:
    tab = open_page(playground)
    fast(tab)
    generate(tab, n=2)
    cards(tab).first.get_by_role("button", name="Interpolate with…").click()  # with the other gallery image
    set_range(tab, "#interp-frames", 4)
    tab.page.fill("#decoder_steps", "6")
    run(tab, "#run-interpolate", 1)  # one gallery card holds the four frames
    assert frames_shown(tab) == 4
    assert_steps_shown(tab, "Inverting image 1 of 2", "Inverting image 2 of 2", "Drawing 32 px")
    strip = cards(tab).first.locator(".strip .frame")
    assert strip.count() == 4 and cards(tab).first.locator(".caption").inner_text().startswith("interpolation")
    strip.nth(2).click()  # the card shows, downloads and acts on the chosen frame
    assert cards(tab).first.locator(".strip .frame").nth(2).get_attribute("aria-pressed") == "true"
    assert "interpolation frame 3" in cards(tab).first.locator(":scope > img").get_attribute("alt")
    view = tab.page.locator("#results .frame-view")
    first = view.get_attribute("alt")
    tab.page.get_by_role("button", name="Play").click()
    tab.page.wait_for_function("a => document.querySelector('#results .frame-view').alt !== a", arg=first)
    tab.page.get_by_role("button", name="Pause").click()
    tab.page.check("input[name=interp-with][value=upload]")
    upload(tab, "#interp-upload", png(64, seed=2))
    set_range(tab, "#interp-frames", 3)
    run(tab, "#run-interpolate", 1)
    assert frames_shown(tab) == 3
    tab.page.check("input[name=interp-with][value=prompts]")
    set_range(tab, "#interp-frames", 2)
    run(tab, "#run-interpolate", 1)
    assert frames_shown(tab) == 2 and cards(tab).count() == 2 + 3


def test_text_diff_frames(open_page, playground: ServerProc) -> None:
    tab = open_page(playground)
    fast(tab)
    upload_source(tab, png(64, seed=3))
    tab.page.get_by_role("tab", name="Text diff").click()
    tab.page.fill("#td-source", "a red circle")
    tab.page.fill("#td-target", "a blue circle")
    set_range(tab, "#td-frames", 3)
    set_range(tab, "#td-theta", 0.4)
    tab.page.fill("#decoder_steps", "6")
    run(tab, "#run-textdiff", 1)
    assert frames_shown(tab) == 3 and cards(tab).first.locator(".strip .frame").count() == 3
    params = json.loads(cards(tab).first.locator("pre").text_content())
    assert params["operation"] == "text_diff" and params["max_theta"] == 0.4
    assert_steps_shown(tab, "Inverting the image", "Drawing 32 px")


def test_each_endpoint_is_sent_the_settings_its_openapi_schema_names(open_page, playground: ServerProc) -> None:
    """Which settings an endpoint takes comes from the server's /openapi.json: a field taken
    out of one endpoint's request body schema is no longer sent there, and still sent to the
    endpoints whose schema has it (JSON and multipart bodies alike)."""
    dropped = {"/v1/images/generations": "best_of", "/v1/images/variations": "upsampler_steps"}

    def without_dropped(route) -> None:
        spec = route.fetch().json()
        for path, name in dropped.items():
            (media,) = spec["paths"][path]["post"]["requestBody"]["content"].values()
            del media["schema"]["properties"][name]
        route.fulfill(json=spec)

    def refuse(route) -> None:  # answered at once: no job runs
        route.fulfill(status=400, json={"error": {"message": "Seen by the test.", "param": None, "code": None}})

    def sent(endpoint: str, button: str) -> bytes:
        """The body the page sends to `endpoint` when `button` is clicked (then refused)."""
        with tab.page.expect_request(f"**/v1/images/{endpoint}") as request:
            tab.page.click(button)
        tab.page.locator("#error").wait_for(state="visible", timeout=TIMEOUT_MS)
        assert "Seen by the test." in tab.page.inner_text("#error")
        return request.value.post_data_buffer

    images = {f"**/v1/images/{endpoint}": refuse for endpoint in ("generations", "edits", "variations")}
    tab = open_page(playground, routes={"**/openapi.json": without_dropped, **images})
    tab.expect_status(400)
    fast(tab)
    tab.page.fill("#prompt", "a red circle")
    body = json.loads(sent("generations", "#generate"))
    assert "best_of" not in body and body["prior_steps"] == 2 and body["upsampler_steps"] == 2
    upload_source(tab, png(64, seed=1))
    form = sent("variations", "#run-variations")
    assert b'name="upsampler_steps"' not in form and b'name="decoder_steps"' in form
    tab.page.get_by_role("tab", name="Edit").click()
    tab.page.locator("#mask-canvas").focus()
    tab.page.keyboard.press("Space")
    tab.page.fill("#edit-prompt", "a green square")
    form = sent("edits", "#run-edit")
    for name in ("best_of", "upsampler_steps", "prior_steps"):
        assert f'name="{name}"'.encode() in form, name


def server_error(server: ServerProc, body: dict) -> dict:
    answer = httpx.post(server.url("/v1/images/generations"), json=body, timeout=30)
    assert answer.status_code == 400
    return answer.json()["error"]


def test_the_servers_errors_are_shown_with_their_param(open_page, playground: ServerProc) -> None:
    tab = open_page(playground)
    tab.expect_status(400)
    fast(tab, decoder_steps=0)
    tab.page.fill("#prompt", "a red circle")
    expected = server_error(playground, {"prompt": "a red circle", "decoder_steps": 0})
    shown = error_after(tab, "#generate")
    assert expected["message"] in shown and "decoder_steps" in shown
    tab.page.fill("#decoder_steps", "2")
    tab.page.fill("#prompt", "x" * 1001)
    expected = server_error(playground, {"prompt": "x" * 1001})
    shown = error_after(tab, "#generate")
    assert expected["message"] in shown and "parameter: prompt" in shown
    assert cards(tab).count() == 0


def test_api_key_is_asked_for_then_used(open_page, keyed_server: ServerProc) -> None:
    tab = open_page(keyed_server)
    tab.expect_status(401)
    key_field = tab.page.get_by_label("API key", exact=True)
    key_field.wait_for()
    assert "needs an API key" in tab.page.inner_text("#key-form")
    key_field.fill(KEY)
    tab.page.get_by_role("button", name="Save key").click()
    tab.page.wait_for_function("() => document.getElementById('model-status').textContent === 'Model: tiny'")
    fast(tab)
    generate(tab)
    tab.page.reload()  # the key is remembered
    tab.page.wait_for_function("() => document.getElementById('model-status').textContent === 'Model: tiny'")
    assert tab.page.locator("#key-form").is_hidden()


def test_cancel_stops_the_job(open_page, playground: ServerProc) -> None:
    tab = open_page(playground)
    fast(tab, prior_steps=250, decoder_steps=250, upsampler_steps=250)
    tab.page.click("#generate")
    tab.page.wait_for_function("() => Number(document.getElementById('progress').getAttribute('value')) > 0")
    assert tab.page.locator("#results img.slot").count() == 1  # waiting for its image
    cancel_and_check(tab, playground)
    upload_source(tab, png(64, seed=1))  # an async job (variations) is cancelled on the server too
    tab.page.click("#run-variations")
    tab.page.wait_for_function("() => Number(document.getElementById('progress').getAttribute('value')) > 0")
    cancel_and_check(tab, playground)


def cancel_and_check(tab: Tab, server: ServerProc) -> None:
    """Cancel the running job: no image, no error, no box left waiting, and the server drops it."""
    tab.page.click("#cancel")
    tab.page.wait_for_function("() => document.getElementById('run-status').textContent === 'Cancelled.'")
    assert cards(tab).count() == 0 and tab.page.locator("#error").is_hidden()
    assert tab.page.locator("#results img").count() == 0
    with httpx.Client(base_url=server.base_url) as http:
        for _ in range(50):
            if http.get("/ready").json()["running"] == 0:
                break
            tab.page.wait_for_timeout(100)
        assert http.get("/ready").json()["running"] == 0  # the server dropped the job


def test_phone_width_labels_and_keyboard(open_page, playground: ServerProc) -> None:
    tab = open_page(playground, width=375, height=800)
    fast(tab)
    generate(tab)
    assert tab.page.evaluate("document.documentElement.scrollWidth") <= 375
    unlabeled = tab.page.evaluate("""() => [...document.querySelectorAll('input, select, textarea, button, canvas')]
        .filter(el => !(el.labels?.length || el.getAttribute('aria-label') || el.getAttribute('aria-labelledby')
                       || (el.tagName === 'BUTTON' && el.textContent.trim())))
        .map(el => el.id || el.outerHTML.slice(0, 60))""")
    assert unlabeled == []
    tab.page.get_by_role("tab", name="Variations").focus()
    tab.page.keyboard.press("ArrowRight")
    assert tab.page.get_by_role("tab", name="Edit").get_attribute("aria-selected") == "true"
    assert tab.page.locator("#panel-edit").is_visible()
    cards(tab).first.get_by_role("button", name="Edit").click()
    tab.page.wait_for_function("() => document.getElementById('mask-canvas').width > 0")
    tab.page.locator("#mask-canvas").focus()
    for key in ("ArrowLeft", "ArrowUp", "Space"):  # the brush moves, then paints
        tab.page.keyboard.press(key)
    assert painted_pixels(tab) > 0
    tab.page.get_by_role("button", name="Undo").click()
    assert painted_pixels(tab) == 0


def test_the_model_says_what_it_draws_with_examples_and_random_captions(open_page, playground: ServerProc,
                                                                       keyed_server: ServerProc) -> None:
    world = httpx.get(playground.url("/v1/models")).json()["data"][0]["world"]
    tab = open_page(playground)
    assert tab.page.inner_text("#world-description") == world["description"]
    assert "circle, square or triangle" in world["description"]
    examples = tab.page.locator("#examples button")
    assert examples.all_inner_texts() == world["examples"]
    examples.nth(1).click()
    assert tab.page.input_value("#prompt") == world["examples"][1]
    for _ in range(3):
        before = tab.page.input_value("#prompt")
        tab.page.get_by_role("button", name="Random caption").click()
        tab.page.wait_for_function("p => document.getElementById('prompt').value !== p", arg=before)
        caption = tab.page.input_value("#prompt")
        assert list(parse_caption(caption)) == list(ATTRIBUTES), caption  # all five, in the world's words
    tab.page.fill("#prompt", "a photo of a cat")  # prompts outside the world stay allowed
    fast(tab)
    run(tab, "#generate", 1)
    plain = open_page(keyed_server)  # a model that says nothing of what it draws: no such section
    plain.expect_status(401)
    assert plain.page.locator("#world").is_hidden()


def test_source_labels_are_cut_at_a_word_with_an_ellipsis(open_page, playground: ServerProc) -> None:
    tab = open_page(playground)
    fast(tab)
    prompt = "a small purple triangle at the bottom right on a yellow background"
    generate(tab, prompt=prompt)
    cards(tab).first.get_by_role("button", name="Variations").click()
    tab.page.wait_for_function("() => document.getElementById('source-label').textContent.includes('purple')")
    label = tab.page.inner_text("#source-label")
    shown = label.split(": ", 2)[-1]
    assert shown.endswith("…") and len(shown) <= 41, label
    assert (prompt + " ").startswith(shown[:-1] + " "), label  # whole words only


def test_phone_shows_progress_where_the_user_is(open_page, playground: ServerProc) -> None:
    tab = open_page(playground, width=390, height=844)
    assert not in_view(tab, "#progress")
    fast(tab, prior_steps=250, decoder_steps=250)
    tab.page.click("#generate")
    tab.page.wait_for_function("() => Number(document.getElementById('progress').getAttribute('value')) > 0")
    assert in_view(tab, "#progress") and in_view(tab, "#run-status") and in_view(tab, "#cancel")
    tab.page.click("#cancel")
    tab.page.wait_for_function("() => document.getElementById('run-status').textContent === 'Cancelled.'")
    for name, value in FAST.items():  # the Advanced section is open already
        tab.page.fill(f"#{name}", str(value))
    generate(tab)
    cards(tab).first.get_by_role("button", name="Edit").click()
    tab.page.wait_for_function("() => document.getElementById('mask-canvas').width > 0")
    tab.page.locator("#mask-canvas").focus()
    tab.page.keyboard.press("Space")
    tab.page.eval_on_selector("#run-edit", "b => b.scrollIntoView({ block: 'end' })")  # Repaint at the bottom
    assert not in_view(tab, "#progress")
    run(tab, "#run-edit", 1)
    assert in_view(tab, "#run-status")


def test_page_and_assets_are_served(playground: ServerProc, keyed_server: ServerProc) -> None:
    with httpx.Client(base_url=keyed_server.base_url) as http:
        page = http.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert page.headers["cache-control"] == "no-cache"
        for name in re.findall(r'/playground/([\w.]+)', page.text):
            asset = http.get(f"/playground/{name}")
            kind = "text/css" if name.endswith(".css") else "text/javascript"
            assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind)
        assert http.get("/playground/nothing.js").status_code == 404
        assert http.get("/playground/..%2Fapp.py").status_code == 404
        assert http.get("/v1/models").status_code == 401  # the API still needs the key
        assert "/" not in http.get("/openapi.json").json()["paths"]


def test_every_playground_file_is_installed_with_the_package() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["server"]
    files = sorted(p.relative_to(ROOT.parent).as_posix() for p in ROOT.iterdir())
    assert files and all(any(fnmatch.fnmatch(f, g) for g in globs) for f in files), (files, globs)
    assert sorted(ASSETS) == sorted(p.name for p in ROOT.iterdir())  # nothing there goes unserved


def test_a_kandinsky_model_offers_its_sizes_and_names_its_stages(open_page, kandinsky_server: ServerProc) -> None:
    """The size menu is the card's (native first, wide and tall ones too, then Auto); a 96x64
    image comes back 96 x 64 with its latent stages named for people, and a variation of a
    64x32 upload at Auto comes back at the size nearest its aspect, 48 x 24."""
    tab = open_page(kandinsky_server)
    options = tab.page.locator("#size option").all_inner_texts()
    assert options[0] == "32 × 32" and "96 × 64" in options and "64 × 96" in options
    assert tab.page.input_value("#size") == "32x32"  # the model's default
    fast(tab)
    tab.page.select_option("#size", "96x64")
    generate(tab, prompt="a cat")
    assert_steps_shown(tab, "Choosing the image embedding", "Drawing the latents", "Decoding the latents into pixels")
    assert natural_size(tab, 0) == [96, 64]
    assert options[-1] == "Auto: an upload's aspect"  # the server sizes an operation on an image by it
    tab.page.select_option("#size", "auto")
    upload_source(tab, png(64, seed=1, height=32))
    tab.page.fill("#var-n", "1")
    run(tab, "#run-variations", 1)
    assert natural_size(tab, 0) == [48, 24]


def natural_size(tab: Tab, card_index: int) -> list[int]:
    """[width, height] of a gallery card's first image."""
    src = cards(tab).nth(card_index).locator("img").first.get_attribute("src")
    return tab.page.evaluate("(src) => new Promise((ok) => { const i = new Image(); "
                             "i.onload = () => ok([i.naturalWidth, i.naturalHeight]); i.src = src; })", src)
