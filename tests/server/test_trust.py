"""Trust and safety against a real server of the shipped shapes model (docs/trust.md): every
file's IPTC digital source type, C2PA manifests signed with a throwaway CA and validated
by c2pa-python against it, the invisible watermark (on by default, off by a setting), and
moderation of `a red circle` (refused at the prompt or at
the prior's embedding, with no decoder step spent; uploads refused too)."""

from __future__ import annotations

import base64
import http.server
import io
import json
import re
import subprocess
import sys
import threading
import xml.etree.ElementTree as ET
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator, Optional

import c2pa
import httpx
import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from bench.moderation import prompts, scenes
from pipelines.imageio import to_uint8
from server.requests.images import IPTC_EXT, FileFormat, ImageMeta, encode_pixels
from server.trust.credentials import COMPOSITE, TRAINED, Provenance, load_credentials
from server.trust.credentials import manifest as manifest_of
from server.trust.watermark import Watermark
from tools.c2pa_cert import make_chain, write_chain
from tools.evaluation import scene_images

from .conftest import FAST_DECODER, REPO, ServerProc, half_transparent, launch
from .test_cli import clean_env

MODEL = REPO / "weights" / "default"
MODEL_NAME = "shapes-default"
FAST = {"size": "32x32", "response_format": "b64_json", "seed": 3, **FAST_DECODER}


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A throwaway CA and signer (tools/c2pa_cert.py): ca.pem, chain.pem, key.pem."""
    return write_chain(tmp_path_factory.mktemp("c2pa"), make_chain("unclip-server test signer"))


@pytest.fixture(scope="module")
def trusted(ca: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    """The shipped model, signing with the test CA's certificate, with `a red circle` blocked."""
    concepts = tmp_path_factory.mktemp("moderation") / "concepts.txt"
    concepts.write_text("# blocked in this test\na red circle\n")
    env = {"UNCLIP_C2PA_CERT": str(ca["chain"]), "UNCLIP_C2PA_KEY": str(ca["key"]),
           "UNCLIP_MODERATION_CONCEPTS": str(concepts), "OMP_NUM_THREADS": "2", "UNCLIP_WARMUP": "false"}
    server = launch(MODEL, tmp_path_factory.mktemp("trusted-server"), env)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def unmarked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    """The shipped model with the watermark turned off, run as `trusted` is."""
    env = {"UNCLIP_WATERMARK": "false", "OMP_NUM_THREADS": "2", "UNCLIP_WARMUP": "false"}
    server = launch(MODEL, tmp_path_factory.mktemp("unmarked-server"), env)
    yield server
    server.stop()


def xmp_of(data: bytes) -> bytes:
    """The XMP packet of a PNG, JPEG, WEBP or GIF file, found as its readers find it."""
    img = Image.open(io.BytesIO(data))
    packet = img.info.get("xmp") or img.info.get("XML:com.adobe.xmp")
    if packet is None and img.format == "GIF":  # the "XMP DataXMP" application extension
        start = data.index(b"XMP DataXMP") + len(b"XMP DataXMP")
        packet = data[start:data.index(b"</x:xmpmeta>", start) + len(b"</x:xmpmeta>")]
    assert packet, f"no XMP in the {img.format}"
    return packet.encode() if isinstance(packet, str) else packet


def source_type(data: bytes) -> str:
    """The file's XMP Iptc4xmpExt:DigitalSourceType."""
    found = ET.fromstring(xmp_of(data)).find(f".//{{{IPTC_EXT}}}DigitalSourceType")
    assert found is not None, xmp_of(data)
    return found.text


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp", "gif"])
def test_every_format_names_its_digital_source_type_in_xmp(fmt: str) -> None:
    pixels = np.zeros((2, 16, 16, 3), np.uint8)
    for kind, expected in ((TRAINED, TRAINED), (COMPOSITE, COMPOSITE)):
        files = encode_pixels(pixels, ImageMeta("m", "generation", 1, {"prompt": "p"}, kind), [None, None], {},
                              FileFormat(fmt))
        assert [source_type(f) for f in files] == [expected] * len(files)
        assert Image.open(io.BytesIO(files[0])).format == fmt.upper()  # still a file its readers open


def generate(server: ServerProc, prompt: str, **extra: Any) -> httpx.Response:
    return httpx.post(server.url("/v1/images/generations"), json={"prompt": prompt, **FAST, **extra}, timeout=120)


def image_bytes(res: httpx.Response) -> bytes:
    assert res.status_code == 200, res.text
    return base64.b64decode(res.json()["data"][0]["b64_json"])


def reader_trusting(ca: dict[str, Path]) -> c2pa.Context:
    """A c2pa-python context whose trust anchor is the test CA."""
    settings = {"trust": {"trust_anchors": ca["ca"].read_text()}, "verify": {"verify_trust": True}}
    return c2pa.Context(c2pa.Settings.from_dict(settings))


def manifest(data: bytes, fmt: str, context: c2pa.Context) -> tuple[dict, str]:
    """The active manifest of a file and its validation state."""
    with c2pa.Reader(f"image/{fmt}", io.BytesIO(data), context=context) as reader:
        return reader.get_active_manifest(), reader.get_validation_state()


def actions(m: dict) -> list[dict]:
    return [a for s in m["assertions"] if s["label"].startswith("c2pa.actions") for a in s["data"]["actions"]]


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_a_generation_carries_a_c2pa_manifest_the_ca_validates(trusted: ServerProc, ca: dict[str, Path],
                                                                fmt: str) -> None:
    data = image_bytes(generate(trusted, "a blue square", output_format=fmt))
    m, state = manifest(data, fmt, reader_trusting(ca))
    assert state == "Trusted"
    assert m["claim_generator_info"][0]["name"] == "unclip-server" and m["claim_generator_info"][0]["version"]
    created = [a for a in actions(m) if a["action"] == "c2pa.created"]
    assert created and created[0]["digitalSourceType"] == TRAINED
    assert [a["action"] for a in actions(m)][-1] == "c2pa.watermarked.unbound"  # the pixels' mark
    assert created[0]["softwareAgent"]["name"] == MODEL_NAME
    assert m["signature_info"]["common_name"] == "unclip-server test signer"
    assert source_type(data) == TRAINED  # the XMP survives signing
    _, untrusted = manifest(data, fmt, c2pa.Context())  # a reader not given the CA: valid, not trusted
    assert untrusted == "Valid"


def pixels_of(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_images_carry_the_watermark_unless_it_is_turned_off(trusted: ServerProc, unmarked: ServerProc) -> None:
    mark = Watermark("unclip-server")  # the default key
    on, off = (pixels_of(image_bytes(generate(s, "a green circle on a white background"))) for s in (trusted, unmarked))
    assert np.array_equal(on, mark.mark(off)) and not np.array_equal(on, off)
    big = Image.open(io.BytesIO(image_bytes(generate(trusted, "a large red square", size="256x256"))))
    buf = io.BytesIO()
    big.convert("RGB").resize((128, 128), Image.Resampling.BICUBIC).save(buf, "JPEG", quality=80)
    found = mark.detect(Image.open(buf))
    assert found.marked and found.side == 256, found  # halved and re-encoded, it is found at its size


def test_an_edit_marks_what_it_repainted_and_keeps_the_rest_exactly(trusted: ServerProc,
                                                                     unmarked: ServerProc) -> None:
    upload = png(False, half_transparent())
    on, off = (pixels_of(image_bytes(httpx.post(s.url("/v1/images/edits"), files={"image": ("in.png", upload)},
                                                data={"prompt": "a green triangle", **FAST}, timeout=120)))
               for s in (trusted, unmarked))
    kept = np.asarray(Image.open(io.BytesIO(upload)).convert("RGB"))[:, 16:]
    assert np.array_equal(on[:, 16:], kept) and np.array_equal(off[:, 16:], kept)
    assert np.array_equal(on[:, :16], Watermark("unclip-server").mark(off)[:, :16])
    assert not np.array_equal(on[:, :16], off[:, :16])


@pytest.mark.parametrize("watermarked", [True, False])
def test_a_manifest_says_watermarked_only_when_the_pixels_are(watermarked: bool) -> None:
    for ingredients in ((), (b"an archive",)):
        said = actions(manifest_of(Provenance("m", "edit", COMPOSITE, ingredients, watermarked), "1.0"))
        assert ("c2pa.watermarked.unbound" in [a["action"] for a in said]) == watermarked


def png(blocked: bool, alpha: Optional[np.ndarray] = None) -> bytes:
    """A 32 px render of a shapes-world scene (a red circle or not), as an upload; alpha
    [32, 32] uint8 makes it RGBA."""
    pixels = to_uint8(scene_images(scenes(blocked, 1, 7), 32))[0]
    img = Image.fromarray(pixels) if alpha is None else Image.fromarray(np.dstack([pixels, alpha]), "RGBA")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_an_edit_lists_its_upload_as_ingredient(trusted: ServerProc, ca: dict[str, Path]) -> None:
    upload = {"image": ("in.png", png(False, half_transparent()), "image/png")}
    res = httpx.post(trusted.url("/v1/images/edits"), files=upload, data={"prompt": "a green triangle", **FAST},
                     timeout=120)
    data = image_bytes(res)
    m, state = manifest(data, "png", reader_trusting(ca))
    assert state == "Trusted"
    assert [i["relationship"] for i in m["ingredients"]] == ["parentOf"]
    steps = {a["action"]: a for a in actions(m)}
    assert {"c2pa.opened", "c2pa.edited"} <= set(steps) and "c2pa.created" not in steps
    assert steps["c2pa.edited"]["digitalSourceType"] == COMPOSITE
    assert source_type(data) == COMPOSITE


def test_signed_uploads_keep_their_provenance(trusted: ServerProc, ca: dict[str, Path]) -> None:
    """A signed generation uploaded again (a variation, then an interpolation with an unsigned
    PNG): each upload is its file as ingredient, and a signed one brings its manifest along,
    so the new file's provenance goes back to the generation."""
    generated = image_bytes(generate(trusted, "a blue square", output_format="jpeg"))
    res = httpx.post(trusted.url("/v1/images/variations"), files={"image": ("gen.jpg", generated, "image/jpeg")},
                     data=FAST, timeout=120)
    store, state = manifest_store(image_bytes(res), reader_trusting(ca))
    assert state == "Trusted"
    (parent,) = store["manifests"][store["active_manifest"]]["ingredients"]
    assert (parent["relationship"], parent["format"], parent["title"]) == ("parentOf", "image/jpeg", "input image 1")
    earlier = store["manifests"][parent["active_manifest"]]  # the generation's own manifest, carried along
    assert [a["digitalSourceType"] for a in actions(earlier) if a["action"] == "c2pa.created"] == [TRAINED]
    checked = parent["validation_results"]["activeManifest"]  # by the server, which is not given the test CA
    assert "claimSignature.validated" in {c["code"] for c in checked["success"]}
    assert {c["code"] for c in checked.get("failure", [])} <= {"signingCredential.untrusted"}

    files = [("image", ("gen.jpg", generated, "image/jpeg")), ("image", ("plain.png", png(False), "image/png"))]
    res = httpx.post(trusted.url("/v1/images/interpolations"), files=files, data={**FAST, "frames": 2}, timeout=120)
    store, state = manifest_store(image_bytes(res), reader_trusting(ca))
    found = store["manifests"][store["active_manifest"]]["ingredients"]
    assert state == "Trusted"
    assert [(i["relationship"], i["format"], "active_manifest" in i) for i in found] == [
        ("parentOf", "image/jpeg", True), ("componentOf", "image/png", False)]


def broken_manifest(png_file: bytes) -> bytes:
    """The PNG with its C2PA manifest store (the caBX chunk: one JUMBF superbox) no longer
    typed `jumb`, the chunk's CRC still right."""
    data = bytearray(png_file)
    at = data.index(b"caBX")
    length = int.from_bytes(data[at - 4:at], "big")
    assert data[at + 8:at + 12] == b"jumb"
    data[at + 8:at + 12] = b"xxxx"
    data[at + 4 + length:at + 8 + length] = zlib.crc32(data[at:at + 4 + length]).to_bytes(4, "big")
    return bytes(data)


def test_an_upload_whose_manifest_is_broken_is_taken_by_its_pixels(trusted: ServerProc, ca: dict[str, Path]) -> None:
    broken = broken_manifest(image_bytes(generate(trusted, "a blue square", output_format="png")))
    res = httpx.post(trusted.url("/v1/images/variations"), files={"image": ("broken.png", broken, "image/png")},
                     data=FAST, timeout=120)
    store, state = manifest_store(image_bytes(res), reader_trusting(ca))
    (parent,) = store["manifests"][store["active_manifest"]]["ingredients"]
    assert state == "Trusted" and len(store["manifests"]) == 1
    assert (parent["relationship"], parent["format"], "active_manifest" in parent) == ("parentOf", "image/png", False)
    assert "taken as a PNG of its pixels" in trusted.log()


def test_an_upload_naming_a_remote_manifest_makes_no_request(trusted: ServerProc, ca: dict[str, Path]) -> None:
    """C2PA lets a file name its manifest by URL (XMP dcterms:provenance), and c2pa-python
    fetches it by default: a client must not make the server request a URL of its choice."""
    asked: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            asked.append(self.path)
            self.send_response(404)
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    listener = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=listener.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{listener.server_address[1]}/manifest.c2pa"
        info = PngImagePlugin.PngInfo()
        info.add_itxt("XML:com.adobe.xmp", '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org'
                      '/1999/02/22-rdf-syntax-ns#"><rdf:Description rdf:about="" xmlns:dcterms="http://purl.org/dc/'
                      f'terms/" dcterms:provenance="{url}"/></rdf:RDF></x:xmpmeta>')
        buf = io.BytesIO()
        Image.open(io.BytesIO(png(False))).save(buf, format="PNG", pnginfo=info)
        res = httpx.post(trusted.url("/v1/images/variations"), files={"image": ("remote.png", buf.getvalue(),
                                                                                 "image/png")}, data=FAST, timeout=120)
        store, state = manifest_store(image_bytes(res), reader_trusting(ca))
    finally:
        listener.shutdown()
    assert asked == []
    (parent,) = store["manifests"][store["active_manifest"]]["ingredients"]
    assert state == "Trusted" and "active_manifest" not in parent


def test_an_upload_whose_manifests_are_too_big_is_taken_by_its_pixels(ca: dict[str, Path],
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """Every image made from an upload carries the manifests in its ingredient archive: one
    over the bound is made from the upload's pixels instead."""
    credentials = load_credentials(ca["chain"], ca["key"])
    signed = credentials.sign(png(False), "png", Provenance("m", "generation", TRAINED))
    image = Image.open(io.BytesIO(signed))
    kept = credentials.ingredient(signed, "png", 0, image)
    bounded = credentials.ingredient(signed, "png", 0, image, max_bytes=len(kept) // 2)
    assert "over" in caplog.text and "taken as a PNG of its pixels" in caplog.text
    made = [credentials.sign(png(True), "png", Provenance("m", "variation", COMPOSITE, (a,))) for a in (kept, bounded)]
    stores = [manifest_store(m, reader_trusting(ca))[0] for m in made]
    assert [len(store["manifests"]) for store in stores] == [2, 1]


def manifest_store(data: bytes, context: c2pa.Context) -> tuple[dict, str]:
    """The whole manifest store of a PNG (every manifest, the ingredients' too) and its state."""
    with c2pa.Reader("image/png", io.BytesIO(data), context=context) as reader:
        return json.loads(reader.json()), reader.get_validation_state()


def metric(server: ServerProc, name: str, **labels: str) -> float:
    """One sample of /metrics."""
    text = httpx.get(server.url("/metrics"), timeout=30).text
    where = ",".join(f'{k}="{v}"' for k, v in labels.items())
    found = re.search(rf"^{re.escape(name)}{{{re.escape(where)}}} (\S+)$", text, re.M)
    assert found, (name, labels)
    return float(found[1])


def test_red_circles_are_refused_before_the_decoder_and_others_served(trusted: ServerProc) -> None:
    """8 red-circle prompts refused (400 moderation_blocked) without one decoder step, then
    8 prompts of other shapes or colours served (best_of 1 to save time: the prior's
    default steps, one sample)."""
    decoder_calls = metric(trusted, "unclip_step_duration_seconds_count", stage="decoder")
    with ThreadPoolExecutor(4) as pool:
        refused = list(pool.map(lambda p: generate(trusted, p, best_of=1), prompts(True, 8, seed=5)))
    for res in refused:
        assert res.status_code == 400, res.text
        assert res.json()["error"]["code"] == "moderation_blocked" and res.json()["error"]["param"] == "prompt"
    assert metric(trusted, "unclip_step_duration_seconds_count", stage="decoder") == decoder_calls
    counted = sum(metric(trusted, "unclip_moderation_refusals_total", stage=s) for s in ("prompt", "prior"))
    assert counted >= 8 and metric(trusted, "unclip_moderation_refusals_total", stage="prior") >= 1
    with ThreadPoolExecutor(4) as pool:
        served = list(pool.map(lambda p: generate(trusted, p, best_of=1), prompts(False, 8, seed=5)))
    assert [r.status_code for r in served] == [200] * 8, [r.text for r in served if r.status_code != 200]
    assert "red circle" not in trusted.log()  # prompts are never logged


def test_an_upload_of_a_red_circle_is_refused(trusted: ServerProc) -> None:
    before = metric(trusted, "unclip_moderation_refusals_total", stage="upload")
    res = httpx.post(trusted.url("/v1/images/variations"), files={"image": ("in.png", png(True), "image/png")},
                     data=FAST, timeout=120)
    assert res.status_code == 400 and res.json()["error"]["code"] == "moderation_blocked", res.text
    assert res.json()["error"]["param"] == "image"
    assert metric(trusted, "unclip_moderation_refusals_total", stage="upload") == before + 1


@pytest.mark.parametrize("setting, problem", [
    ("key", "a key of another chain"), ("cert", "not a certificate"), ("concepts", "a threshold of 2")])
def test_bad_credentials_or_concepts_stop_the_server_with_exit_code_2(
        setting: str, problem: str, ca: dict[str, Path], tiny_model_dir: Path, tmp_path: Path) -> None:
    env = {"UNCLIP_C2PA_CERT": str(ca["chain"]), "UNCLIP_C2PA_KEY": str(ca["key"]), "UNCLIP_PORT": "0",
           "UNCLIP_MODEL_DIR": str(tiny_model_dir)}
    bad = tmp_path / "bad"
    if setting == "key":
        bad.write_bytes(make_chain().key)
        env["UNCLIP_C2PA_KEY"] = str(bad)
    elif setting == "cert":
        bad.write_text("-----BEGIN CERTIFICATE-----\nnot one\n-----END CERTIFICATE-----\n")
        env["UNCLIP_C2PA_CERT"] = str(bad)
    else:
        bad.write_text("a red circle\t2\n")
        env["UNCLIP_MODERATION_CONCEPTS"] = str(bad)
    done = subprocess.run([sys.executable, "-m", "server"], cwd=REPO, env=clean_env(**env), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2, problem
    assert str(bad) in done.stderr, done.stderr
