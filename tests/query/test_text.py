"""Text encoders (offline MiniLM default, pluggable backends) and the text projection module."""
from __future__ import annotations

import pytest
import torch

from separator.checkpoint import Component, ModelFolder, save_model
from qsep_core.config import to_dict
from separator.query.errors import QueryError, UnknownTextBackendError
from separator.query.text import (
    TEXT_BACKENDS,
    TextProjection,
    TextProjectionConfig,
    load_text_encoder,
    minilm_model_dir,
)

from .conftest import NetworkBlocked

SENTENCES = ["dog barking", "a dog barks in the distance", "church bell ringing", "rain on a tin roof"]


def test_network_block_is_effective(no_network):
    import socket

    with pytest.raises(NetworkBlocked):
        socket.create_connection(("example.com", 80), timeout=1)


def test_minilm_default_loads_offline_and_matches_sentence_transformers(no_network):
    enc = load_text_encoder()  # loaded with every socket call refused
    assert enc.spec == "minilm" and enc.dim == 384
    emb = enc.encode(SENTENCES)
    assert emb.shape == (4, 384)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(4), rtol=0, atol=1e-5)
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2] and sim[0, 1] > sim[0, 3]  # paraphrase closer than other sounds

    from sentence_transformers import SentenceTransformer

    ref = SentenceTransformer(str(minilm_model_dir()), device="cpu", local_files_only=True)
    expected = ref.encode(SENTENCES, convert_to_tensor=True, normalize_embeddings=True).float()
    torch.testing.assert_close(emb, expected, rtol=0, atol=1e-5)
    assert no_network == []


def test_sentence_transformers_backend_from_local_folder(no_network, minilm):
    enc = load_text_encoder(f"sentence-transformers:{minilm_model_dir()}")
    assert enc.dim == 384 and enc.spec.startswith("sentence-transformers:")
    torch.testing.assert_close(enc.encode(SENTENCES[:2]), minilm.encode(SENTENCES[:2]), rtol=0, atol=1e-5)


def test_clap_backend_from_tiny_local_config(tmp_path, no_network):
    from transformers import AutoTokenizer, ClapTextConfig, ClapTextModelWithProjection

    tok = AutoTokenizer.from_pretrained(str(minilm_model_dir()), local_files_only=True)
    cfg = ClapTextConfig(
        vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=37, projection_dim=16, max_position_embeddings=64, pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = ClapTextModelWithProjection(cfg).eval()
    folder = tmp_path / "tiny-clap"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)

    enc = load_text_encoder(f"clap:{folder}")
    assert enc.dim == 16
    emb = enc.encode(SENTENCES)
    assert emb.shape == (4, 16)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(4), rtol=0, atol=1e-5)
    batch = tok(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).text_embeds
    torch.testing.assert_close(emb, torch.nn.functional.normalize(ref, dim=-1), rtol=0, atol=1e-5)


def test_backend_registry_errors():
    assert {"minilm", "sentence-transformers", "clap"} <= set(TEXT_BACKENDS)
    with pytest.raises(UnknownTextBackendError, match="unknown text encoder 'nope'"):
        load_text_encoder("nope")
    with pytest.raises(QueryError, match="needs a model"):
        load_text_encoder("clap")


def test_empty_text_is_an_error(minilm):
    with pytest.raises(QueryError, match="empty"):
        minilm.encode(["dog", "  "])
    with pytest.raises(TypeError):
        minilm.encode("dog")


def test_projection_scales_to_latents_and_round_trips_through_a_model_folder(tmp_path):
    cfg = TextProjectionConfig(text_dim=8, latent_dim=6, hidden_dim=5, templates=("the sound of {}",))
    proj = TextProjection(cfg)
    g = torch.Generator().manual_seed(0)
    latents = 3.0 + torch.randn(50, 6, generator=g)
    proj.set_latent_stats(latents)
    torch.testing.assert_close(proj.latent_mean, latents.mean(0))
    t = torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=-1)
    with torch.no_grad():
        cond = proj.eval()(t)
    # condition = mean + scale * unit direction
    torch.testing.assert_close((cond - proj.latent_mean).norm(dim=-1), proj.latent_scale.expand(4), rtol=1e-5, atol=1e-5)

    save_model(tmp_path / "m", {"text_projection": Component("text_projection", to_dict(cfg), proj.state_dict())})
    back = ModelFolder(tmp_path / "m").build("text_projection")
    assert isinstance(back, TextProjection) and back.config == cfg
    with torch.no_grad():
        torch.testing.assert_close(back(t), cond)
    assert back.prompts("dog") == ["dog", "the sound of dog"]
    with pytest.raises(QueryError, match="dim 7 but the projection expects 8"):
        back(torch.randn(2, 7))


def test_a_text_seen_before_loads_no_text_encoder(tmp_path):
    """Start-up (issue 19): the routing store caches every text it embeds, and MiniLM is loaded on first use, so a
    text query asked before never imports transformers."""
    import os
    import subprocess
    import sys

    code = ("import sys\nfrom separator.query import Query, QueryEncoder\n"
            "res = QueryEncoder.from_model(None).encode(Query.build(text='a dog barking loudly'))\n"
            "print(res.condition.shape[0], 'transformers' in sys.modules)\n")
    env = {**os.environ, "QSEP_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    second = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert first.stdout.split() == ["96", "True"]  # new text: MiniLM embeds it
    assert second.stdout.split() == ["96", "False"]  # the same text again: from the cache, no transformers
