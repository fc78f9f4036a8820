"""Content credentials: a C2PA manifest signed into every image file, with the official
`c2pa-python` bindings (the `c2pa` extra), when the operator gives a certificate chain and
its key (UNCLIP_C2PA_CERT, UNCLIP_C2PA_KEY: PEM files; ES256, P-256) and optionally a
timestamp authority (UNCLIP_C2PA_TSA_URL). Without them no manifest is written.

The manifest's claim generator is this server and its version. A generation's action is
`c2pa.created` with its IPTC digital source type (trainedAlgorithmicMedia) and the model
as its software agent; an image made from uploads (edits, variations, interpolations of
images, text diffs) lists them as ingredients (the first `parentOf`, the others
`componentOf`) with `c2pa.opened` and `c2pa.edited` (compositeWithTrainedAlgorithmicMedia).
With the invisible watermark on, `c2pa.watermarked.unbound` follows: a watermark was put
into the pixels that does not identify this manifest (it says only "made by this server").
An ingredient is the uploaded file itself, hashed where it arrives (`Credentials.ingredient`,
on the replica that accepts the request) into a C2PA ingredient archive of a few KB that
travels with the job: a manifest the file carried is kept in it, so the provenance of an
edit of a signed image (ours or anyone's) goes back through that image's own manifests.
A remote manifest that an upload's XMP names is never fetched (`SETTINGS`).

`load_credentials` signs and reads back a probe image at start: a certificate that does
not parse, a key that does not match it, or a chain a validator refuses raises
`BadCredentials` (the server exits with code 2). Manifests carry no thumbnail (it would
add 30-90 ms and about 30 KB per image; the image is small enough to be its own).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Optional, Sequence

from PIL import Image

try:  # the `c2pa` extra: needed only when a certificate is configured
    import c2pa
except ImportError:  # pragma: no cover - reported by load_credentials
    c2pa = None

log = logging.getLogger(__name__)
SERVER = "unclip-server"
# IPTC digital source types (https://cv.iptc.org/newscodes/digitalsourcetype/): made by a
# trained model from a prompt; a composite of uploaded media and such a model's output.
TRAINED = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
COMPOSITE = "http://cv.iptc.org/newscodes/digitalsourcetype/compositeWithTrainedAlgorithmicMedia"
MIME = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp", "gif": "image/gif"}
# No thumbnails (see the module docstring), and never a fetch of the remote manifest an
# upload's XMP may name (dcterms:provenance): the library's default would make the server
# request any URL a client writes into a file.
SETTINGS = {"builder": {"thumbnail": {"enabled": False}}, "verify": {"remote_manifest_fetch": False}}
# An upload's ingredient archive beyond this is made from its pixels instead: the manifests
# it carries go into every image made from it (C2PA manifests are a few KB to a few hundred).
MAX_INGREDIENT_BYTES = 1 << 20
# Validation codes of a probe that do not make credentials bad: a private CA is untrusted
# until readers are given it, and OCSP is not fetched.
HARMLESS = ("signingCredential.untrusted", "signingCredential.ocsp.skipped", "timeStamp.untrusted")


class BadCredentials(ValueError):
    """The C2PA certificate or key cannot sign (a bad setting: exit code 2)."""


def server_version() -> str:
    """This server's version, as installed."""
    try:
        return metadata.version(SERVER)
    except metadata.PackageNotFoundError:
        return "0.0.0"


@dataclass(frozen=True)
class Provenance:
    """What a manifest says of one file: the model, the operation, the IPTC digital
    source type, and the uploads it was made from (`Credentials.ingredient` archives, in
    upload order; none for generations)."""

    model: str
    operation: str
    source_type: str
    ingredients: Sequence[bytes] = ()
    watermarked: bool = False  # its pixels carry the server's watermark (server/trust/watermark.py)


def manifest(p: Provenance, version: str) -> dict[str, Any]:
    """The manifest definition of a file: claim generator, actions (see the module docstring)."""
    agent = {"name": p.model}
    params = {"operation": p.operation}
    if not p.ingredients:
        actions = [{"action": "c2pa.created", "digitalSourceType": p.source_type, "softwareAgent": agent,
                    "parameters": params}]
    else:
        ids = [f"input{i}" for i in range(len(p.ingredients))]
        actions = [{"action": "c2pa.opened", "parameters": {"ingredientIds": ids[:1]}},
                   {"action": "c2pa.edited", "digitalSourceType": p.source_type, "softwareAgent": agent,
                    "parameters": {**params, "ingredientIds": ids}}]
    if p.watermarked:  # a watermark that carries no reference to this manifest
        actions.append({"action": "c2pa.watermarked.unbound", "softwareAgent": {"name": SERVER}})
    return {"claim_generator_info": [{"name": SERVER, "version": version}],
            "assertions": [{"label": "c2pa.actions", "data": {"actions": actions}}]}


class Credentials:
    """A loaded signer: `sign` embeds a signed manifest into a file."""

    def __init__(self, signer: Any, version: str):
        self.signer, self.version = signer, version
        self.context = c2pa.Context(c2pa.Settings.from_dict(SETTINGS))

    def sign(self, data: bytes, fmt: str, p: Provenance) -> bytes:
        """The file `data` (format `fmt`: png, jpeg, webp or gif) with a signed manifest of `p`."""
        with c2pa.Builder(manifest(p, self.version), self.context) as builder:
            for archive in p.ingredients:
                builder.add_ingredient_from_archive(io.BytesIO(archive))
            out = io.BytesIO()
            builder.sign(self.signer, MIME[fmt], io.BytesIO(data), out)
            return out.getvalue()

    def ingredient(self, data: bytes, fmt: str, index: int, image: Image.Image,
                   max_bytes: int = MAX_INGREDIENT_BYTES) -> bytes:
        """The uploaded file `data` (format `fmt`: png, jpeg or webp) as upload number `index`
        of its request: a C2PA ingredient archive (its hash, and the manifests it carries).
        A file the C2PA library cannot take, or whose manifests make an archive over
        `max_bytes` (every image made from it would carry them), is replaced by a PNG of
        `image`, its pixels."""
        try:
            archive = self._archive(data, fmt, index)
            if len(archive) <= max_bytes:
                return archive
            reason = f"its manifests take {len(archive)} bytes, over {max_bytes}"
        except c2pa.C2paError as err:
            reason = f"its file cannot be an ingredient: {err}"
        log.warning("upload %d is taken as a PNG of its pixels: %s", index + 1, reason)
        buf = io.BytesIO()
        image.convert("RGB").save(buf, format="PNG")
        return self._archive(buf.getvalue(), "png", index)

    def _archive(self, data: bytes, fmt: str, index: int) -> bytes:
        relation = "parentOf" if index == 0 else "componentOf"
        label = f"input{index}"
        with c2pa.Builder({"claim_generator_info": [{"name": SERVER, "version": self.version}]},
                          self.context) as builder:
            builder.add_ingredient({"title": f"input image {index + 1}", "relationship": relation, "label": label},
                                   MIME[fmt], io.BytesIO(data))
            out = io.BytesIO()
            builder.write_ingredient_archive(label, out)
            return out.getvalue()


def load_credentials(cert: Optional[Path], key: Optional[Path], tsa_url: Optional[str] = None) -> Optional[Credentials]:
    """Credentials from PEM files (None when neither is given), checked by signing and
    reading back a probe image; BadCredentials says what is wrong."""
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise BadCredentials("C2PA signing needs both UNCLIP_C2PA_CERT and UNCLIP_C2PA_KEY")
    if c2pa is None:
        raise BadCredentials("C2PA signing needs the c2pa-python package: pip install 'unclip-server[c2pa]'")
    chain, private = _read(cert, "certificate chain"), _read(key, "private key")
    try:
        info = c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, chain, private, tsa_url or None)
        credentials = Credentials(c2pa.Signer.from_info(info), server_version())
        _probe(credentials)
    except (c2pa.C2paError, ValueError) as err:
        raise BadCredentials(f"the C2PA certificate {cert} and key {key} cannot sign (ES256 expected): "
                             f"{err}") from None
    return credentials


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise BadCredentials(f"cannot read the C2PA {what} {path}: {err.strerror}") from None


def _probe(credentials: Credentials) -> None:
    """Sign a 1x1 PNG and read it back: ValueError unless its manifest validates (trust apart)."""
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, format="PNG")
    signed = credentials.sign(buf.getvalue(), "png", Provenance("probe", "probe", TRAINED))
    with c2pa.Reader(MIME["png"], io.BytesIO(signed)) as reader:
        results = (reader.get_validation_results() or {}).get("activeManifest", {})
    failures = [f["code"] for f in results.get("failure", []) if f["code"] not in HARMLESS]
    if failures:
        raise ValueError(f"a manifest signed with them does not validate: {', '.join(failures)}")
