"""Captured inputs bounded when a scenario loads: the texts file (format, size, UTF-8, document
count), the model folder and its config.json, `layer` and `max_length` against the model, the
capture's projected bytes against `capture_limit_gb`, and `layer:` in an e2e scenario. Each is one
line naming the file and the key, exit 2 from `validate`. Needs no transformers: a model folder
here is a config.json and a placeholder weights file, which is all `validate` reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from harness.cli import main
from harness.config.scenario import ScenarioError, load_scenario
from harness.inputs.capture import capture, texts

CONFIG = {"num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 32, "max_position_embeddings": 64}


def _model(tmp_path: Path, config: object = CONFIG) -> Path:
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    text = config if isinstance(config, str) else json.dumps(config)
    (folder / "config.json").write_text(text)
    (folder / "model.safetensors").write_bytes(b"placeholder: validate reads no weights")
    return folder


def _texts(tmp_path: Path, n: int = 8) -> Path:
    path = tmp_path / "docs.txt"
    path.write_text("# comment\n" + "\n\n".join(f"document {i}\nits second line" for i in range(n)) + "\n")
    return path


def _scenario(tmp_path: Path, kind: str = "kernel", **inputs: object) -> Path:
    problem = {"batch": 1, "heads": 4, "head_dim": 8, "seq_len": inputs.get("max_length", 16)}
    raw = {
        "name": "bounds", "kind": kind, "device": "cpu", "problem": problem,
        "inputs": {"dist": "captured", "max_length": 16, **inputs}, "variants": [{"name": "softmax"}],
    }  # fmt: skip
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _validate_error(path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """validate's exit code is 2 and stderr one line, without a traceback: that line."""
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err.strip()


def test_texts_file_format_blocks_comments_and_hash(tmp_path: Path) -> None:
    docs = texts.read_texts(str(_texts(tmp_path, 3)))
    assert docs == [f"document {i} its second line" for i in range(3)]
    assert texts.parse_blocks("a\n\n\n  # c\nb\n c \n\n") == ["a", "b c"]
    assert len(texts.texts_hash(docs)) == 16 and texts.texts_hash(docs) != texts.texts_hash(docs[:2])
    assert len(texts.read_texts(None)) == 64 and texts.read_texts("short") == texts.read_texts(None)
    long = texts.read_texts("long")
    assert len(long) == 64 and min(len(d.split()) for d in long) > 300  # >= 512 tokens: test_quality_long


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "expected at least 2 documents"),
        (b"# only a comment\n\n", "expected at least 2 documents"),
        (b"one line only\n", "found 1"),
        (b"two lines\nstill one block\n", "found 1"),
        (b"caf\xe9\n\nlatin-1\n", "not UTF-8"),
    ],
)
def test_bad_texts_file_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, expected: str
) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_bytes(content)
    err = _validate_error(_scenario(tmp_path, model=str(_model(tmp_path)), texts=str(bad)), capsys)
    assert "inputs.texts" in err and str(bad) in err and expected in err


def test_texts_file_size_and_count_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(texts, "MAX_TEXTS", 5)
    with pytest.raises(texts.TextsError, match="8 documents, more than the 5"):
        texts.read_texts(str(_texts(tmp_path, 8)))
    monkeypatch.setattr(texts, "MAX_BYTES", 100)
    big = tmp_path / "big.txt"
    big.write_text("x\n\n" * 60)
    with pytest.raises(texts.TextsError, match=r"big.txt: 180 bytes, more than the 100"):
        texts.read_texts(str(big))
    with pytest.raises(texts.TextsError, match="not a regular file"):
        texts.read_texts(str(tmp_path))


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ("{not json", "config.json: not valid JSON"),
        ("[1, 2]", "config.json: expected a JSON object, found list"),
        ({**CONFIG, "num_attention_heads": "four"}, "num_attention_heads: expected an int >= 1, found 'fo"),
        ({**CONFIG, "hidden_size": 30}, "hidden_size 30 is not a multiple of 4 heads"),
        ({k: v for k, v in CONFIG.items() if k != "max_position_embeddings"}, "max_position_embeddings"),
    ],
)
def test_malformed_model_config_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], config: object, expected: str
) -> None:
    folder = _model(tmp_path, config)
    err = _validate_error(_scenario(tmp_path, model=str(folder), texts=str(_texts(tmp_path))), capsys)
    assert "inputs.model" in err and str(folder / "config.json") in err and expected in err


def test_model_folder_layer_and_max_length_checked_in_validate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    docs = str(_texts(tmp_path))
    err = _validate_error(_scenario(tmp_path, model=str(tmp_path / "nowhere"), texts=docs), capsys)
    assert "inputs.model" in err and "no model folder" in err
    folder = _model(tmp_path)
    (folder / "model.safetensors").unlink()
    err = _validate_error(_scenario(tmp_path, model=str(folder), texts=docs), capsys)
    assert "inputs.model" in err and "no weights file" in err
    folder = str(_model(tmp_path))
    err = _validate_error(_scenario(tmp_path, model=folder, texts=docs, layer=2), capsys)
    assert "inputs.layer: expected 0 .. 1" in err and "2 layers" in err
    err = _validate_error(_scenario(tmp_path, model=folder, texts=docs, max_length=1_000_000_000), capsys)
    assert "inputs.max_length: expected at most 64 (max_position_embeddings" in err
    assert main(["validate", str(_scenario(tmp_path, model=folder, texts=docs, layer=1, max_length=64))]) == 0


def test_projected_capture_bytes_bounded_by_a_knob_the_user_can_raise(tmp_path: Path) -> None:
    folder, docs = str(_model(tmp_path)), str(_texts(tmp_path))
    # 8 texts x 64 tokens x (3 x 2 layers x 4 heads x 8 dims x 4 bytes + 1 mask byte)
    size = capture.projected_bytes(8, 2, 4, 8, 64)
    assert size == 8 * 64 * (3 * 2 * 4 * 8 * 4 + 1)
    over = _scenario(tmp_path, model=folder, texts=docs, max_length=64, capture_limit_gb=1e-4)
    with pytest.raises(ScenarioError, match=r"inputs.max_length: the capture .* capture_limit_gb 0.0001"):
        load_scenario(str(over))
    load_scenario(str(_scenario(tmp_path, model=folder, texts=docs, max_length=64, capture_limit_gb=1e-3)))


def test_layer_in_an_e2e_scenario_is_a_validate_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, docs = str(_model(tmp_path)), str(_texts(tmp_path))
    err = _validate_error(_scenario(tmp_path, kind="e2e", model=folder, texts=docs, layer=0), capsys)
    assert "inputs.layer" in err and "swaps every attention layer" in err
    assert main(["validate", str(_scenario(tmp_path, kind="e2e", model=folder, texts=docs))]) == 0
