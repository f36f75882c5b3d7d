"""Text -> label-bank classes through the AudioSet ontology (separator.query.routing / ontology)."""
from __future__ import annotations

import re

import hashlib
import json
from importlib import resources
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from qsep_core.hub import DEFAULT_MODEL, PRETRAINED_DIR
from separator.query import routing as routing_mod
from separator.query.compose import Query, QueryEncoder
from separator.query.errors import QueryError
from separator.query.labels import LabelBank, LabelBankConfig, build_label_bank, builtin_synonyms
from separator.query.ontology import bank_class_anchors, default_ontology, hierarchy_factors, load_ontology
from separator.query.routing import (
    SHIPPED_EMBEDDINGS,
    RoutingConfig,
    TextEmbeddingStore,
    TextRouter,
    encoder_key,
    query_keys,
    routing_texts,
)
from separator.query.text import TextProjection, TextProjectionConfig

#: the classes of the shipped qsep-starter label bank (25 events + 4 music stems)
STARTER_NAMES = (
    "Accompaniment, piano, guitar and synthesizer", "Aircraft engine", "Arrow", "Bass, bass guitar", "Bird",
    "Canidae, dogs, wolves", "Cattle, bovinae", "Chicken, rooster", "Chop", "Clip-clop", "Drums, drum kit",
    "Explosion", "Fire", "Grunt", "Gunshot, gunfire", "Hammer", "Horse", "Laughter", "Music", "Pig", "Rain",
    "Rustling leaves", "Sawing", "Sheep", "Speech", "Vocals, singing voice", "Walk, footsteps", "Water", "Wind",
)
VOCALS, DRUMS, BASS, OTHER = STARTER_NAMES[25], STARTER_NAMES[10], STARTER_NAMES[3], STARTER_NAMES[0]
MODEL_DIR = PRETRAINED_DIR / DEFAULT_MODEL
REFERENCE_ONTOLOGY = Path(__file__).resolve().parents[2].parent / "shared" / "reference" / "audioset_ontology.json"


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Routing caches go to a temporary folder, never to the user's ~/.cache."""
    monkeypatch.setenv("QSEP_CACHE", str(tmp_path / "qsep-cache"))


@pytest.fixture(scope="module")
def starter_router(minilm) -> TextRouter:
    return TextRouter(STARTER_NAMES, minilm, cache_dir=False)


@pytest.fixture(scope="module")
def small_router(minilm) -> TextRouter:
    """A bank of a parent class (Dog, Water) and of children of Water (Rain, Stream, Ocean) and of Vehicle."""
    return TextRouter(("Dog", "Rain", "Stream", "Ocean", "Speech", "Car", "Truck"), minilm, cache_dir=False)


def _bank(names, latent_dim=8, latent_norm=None, seed=0) -> LabelBank:
    g = torch.Generator().manual_seed(seed)
    bank = LabelBank(LabelBankConfig(names=tuple(names), latent_dim=latent_dim, latent_norm=latent_norm))
    with torch.no_grad():
        bank.centroids.copy_(torch.randn(len(names), latent_dim, generator=g) * torch.linspace(1, 3, len(names))[:, None])
        bank.global_mean.copy_(torch.randn(latent_dim, generator=g))
    return bank


# ---------------------------------------------------------------------------- the data files


def test_shipped_ontology_is_the_reference_copy_with_its_notice():
    onto = default_ontology()
    assert len(onto) == 632 and len([c for c in onto.classes if not c.parents]) == 7
    assert onto.sha256 == "9c685f4403eecc3ca9be37fd7285cf212feaaea6ff7229d3e7ca89e0d1f2d15d"
    if REFERENCE_ONTOLOGY.is_file():
        assert hashlib.sha256(REFERENCE_ONTOLOGY.read_bytes()).hexdigest() == onto.sha256
    notice = resources.files("separator.query").joinpath("data", "NOTICE.md").read_text()
    assert "CC BY-SA 4.0" in notice and onto.sha256 in notice
    dog = onto.by_name("dog")
    assert dog.mid == "/m/0bt9lr" and onto.by_name("Bark").parents == (dog.index,)


def test_synonym_targets_and_bank_map_name_real_ontology_classes():
    onto = default_ontology()
    missing = {a: c for a, cands in builtin_synonyms().items() for c in cands if onto.by_name(c) is None}
    assert missing == {}
    table = json.loads(resources.files("separator.query").joinpath("data", "bank_class_ontology.json").read_text())
    for bank_name, entry in table["classes"].items():
        assert [onto.by_mid(m).name for m in entry["mids"]] == entry["names"], bank_name
    anchors = bank_class_anchors(STARTER_NAMES, onto)
    assert [onto.classes[i].name for i in anchors[VOCALS]] == ["Singing"]
    assert [onto.classes[i].name for i in anchors[DRUMS]] == ["Drum kit", "Drum"]
    assert [onto.classes[i].name for i in anchors["Canidae, dogs, wolves"]] == ["Canidae, dogs, wolves", "Dog"]  # a name part
    assert [onto.classes[i].name for i in anchors["Walk, footsteps"]] == ["Walk, footsteps"]
    assert all(anchors[n] for n in STARTER_NAMES)  # every starter class has a place in the hierarchy
    assert bank_class_anchors(["Whatever sound"], onto) == {"Whatever sound": []}
    with pytest.raises(QueryError, match="not an ontology class"):
        bank_class_anchors(["X"], onto, extra={"X": ["/m/nope"]})


def test_ontology_loader_errors(tmp_path):
    (tmp_path / "bad.json").write_text(json.dumps([{"id": "/m/a", "name": "A", "child_ids": ["/m/zz"]}]))
    with pytest.raises(QueryError, match="unknown child id '/m/zz'"):
        load_ontology(tmp_path / "bad.json")
    with pytest.raises(QueryError, match="cannot read"):
        load_ontology(tmp_path / "missing.json")


def test_hierarchy_factors_known_answers():
    onto = default_ontology()
    idx = {n: onto.by_name(n).index for n in ("Dog", "Bark", "Domestic animals, pets", "Yip", "Animal", "Canidae, dogs, wolves", "Cat")}
    f = hierarchy_factors(onto, [idx["Dog"]], up=0.8, down=0.5, max_hops=3)
    assert f[idx["Dog"]] == (1.0, 0)
    assert f[idx["Bark"]] == (0.8, 1)  # the query Bark is a child of the bank class Dog: one step up
    assert f[idx["Domestic animals, pets"]] == (0.5, 1)  # the bank class is a kind of the query's class
    assert f[idx["Yip"]] == (0.8, 1)
    assert f[idx["Canidae, dogs, wolves"]] == (pytest.approx(0.5 * 0.8), 2)  # through the shared child Howl
    assert f[idx["Cat"]][1] == 2  # sibling through Domestic animals, pets
    # Animal is a root: it may end a path (Dog -> Domestic animals -> Animal) but never joins two classes
    assert f[idx["Animal"]] == (0.25, 2)
    assert onto.by_name("Bird").index not in f
    assert hierarchy_factors(onto, [idx["Dog"]], 0.8, 0.5, 0) == {idx["Dog"]: (1.0, 0)}


def test_query_keys_drop_fillers():
    assert query_keys("A dog") == ["a dog", "dog"]
    assert query_keys("the sound of rain") == ["the sound of rain", "rain"]
    assert query_keys("dog sounds") == ["dog sounds", "dog"]
    assert query_keys("a") == ["a"]


# ---------------------------------------------------------------------------- routing


@pytest.mark.parametrize(
    "query,expected",
    [
        ("dog barking", "Canidae, dogs, wolves"),  # synonym of Bark, Dog; Dog is the bank class's part "dogs"
        ("wolf howling", "Canidae, dogs, wolves"),
        ("vocal", VOCALS),  # the AudioSet synonym names Singing first, then Speech
        ("a dog", "Canidae, dogs, wolves"),
        ("vocals", VOCALS),
        ("singing", VOCALS),  # ontology Singing = the vocal stem's anchor
        ("a woman singing", VOCALS),
        ("drums", DRUMS),
        ("bass guitar", BASS),
        ("piano", OTHER),
        ("electric guitar", OTHER),
        ("engine", "Aircraft engine"),  # Engine -> Jet engine -> Aircraft engine
        ("car engine", "Aircraft engine"),
        ("helicopter", "Aircraft engine"),  # Helicopter -> Aircraft -> Aircraft engine
        ("rain on a roof", "Rain"),
        ("people talking", "Speech"),
        ("a man speaking", "Speech"),
        ("birds chirping", "Bird"),
        ("footsteps on gravel", "Walk, footsteps"),
        ("cow mooing", "Cattle, bovinae"),
    ],
)
def test_known_names_and_synonyms_route_to_the_right_class(starter_router, query, expected):
    r = starter_router.route(query)
    assert r.matched, r.summary()
    assert r.classes[0].name == expected, r.summary()
    assert r.classes[0].weight > 0.5
    assert sum(c.weight for c in r.classes) == pytest.approx(1.0, abs=1e-6)
    assert all(c.score >= starter_router.config.threshold for c in r.classes)
    assert len(r.classes) <= starter_router.config.top_k


def test_how_a_class_was_reached_is_recorded(starter_router):
    bark = starter_router.route("dog barking").classes[0]  # a synonym of Bark, then of Dog (the bank class's part "dogs")
    assert (bark.via, bark.hops, bark.how) == ("Dog", 0, "synonym 'dog barking'")
    heli = starter_router.route("helicopter").classes[0]
    assert (heli.via, heli.hops, heli.how) == ("Helicopter", 2, "exact name")
    vocals = starter_router.route("vocals").classes[0]
    assert (vocals.how, vocals.weight, vocals.score) == ("bank name part", 1.0, 1.0)
    assert bark.explain() == "Canidae, dogs, wolves 1.00 (score 0.90: synonym 'dog barking' via Dog)"
    assert "via Helicopter, 2 hops" in heli.explain()


def test_held_out_goat_goes_to_its_relatives_sheep_first(starter_router):
    r = starter_router.route("goat")  # Goat is not in the bank: siblings under Livestock, Sheep shares Bleat
    assert r.classes[0].name == "Sheep"
    assert {c.via for c in r.classes} == {"Goat"} and all(c.hops == 2 for c in r.classes)
    assert {c.name for c in r.classes} <= {"Sheep", "Cattle, bovinae", "Pig", "Horse"}


def test_child_query_goes_to_its_parent_and_parent_query_to_its_children(small_router):
    yip = small_router.route("yip")  # Yip: a child of Dog, absent from the bank
    assert yip.classes[0].name == "Dog" and (yip.classes[0].via, yip.classes[0].hops) == ("Yip", 1)
    water = small_router.route("water")  # Water: parent of Rain, Stream, Ocean
    assert {c.name for c in water.classes} == {"Rain", "Stream", "Ocean"}
    assert all((c.via, c.hops) == ("Water", 1) for c in water.classes)
    assert sum(c.weight for c in water.classes) == pytest.approx(1.0, abs=1e-6)
    vehicle = small_router.route("motor vehicle")  # Motor vehicle (road) -> Car, Truck
    assert {c.name for c in vehicle.classes} == {"Car", "Truck"}


def test_nonsense_matches_nothing_and_says_what_is_closest(starter_router):
    for q in ("xqzv blorf", "asdf qwerty"):
        r = starter_router.route(q)
        assert not r.matched and r.weights == {}
        assert r.best_score < starter_router.config.threshold
        assert "matches no class of the label bank well" in r.summary() and len(r.closest) == 3
        assert r.describe()["matched"] is False


@pytest.mark.parametrize(
    "query,named",
    [("typing on a computer keyboard", "Computer keyboard"), ("car horn", "Vehicle horn, car horn, honking"),
     ("cough", "Cough"), ("thunder", "Thunder")],
)
def test_a_query_naming_a_class_unrelated_to_the_bank_matches_nothing(starter_router, query, named):
    r = starter_router.route(query)
    assert not r.matched and r.unrelated and r.nearest_ontology[0][0] == named
    assert f"it names the AudioSet class {named!r}" in r.summary()


def test_a_query_that_names_a_bank_class_is_not_unrelated(starter_router):
    # the best ontology class (Splash, splatter; Drip) has no relative in the bank, but the query says "water"
    for q in ("splashing water", "water dripping"):
        r = starter_router.route(q)
        assert r.matched and r.classes[0].name == "Water", r.summary()


def test_routing_parameters(minilm):
    sharp = TextRouter(STARTER_NAMES, minilm, config=RoutingConfig(top_k=1), cache_dir=False)
    assert len(sharp.route("goat").classes) == 1
    flat = TextRouter(STARTER_NAMES, minilm, config=RoutingConfig(temperature=10.0, min_weight=0.0), cache_dir=False)
    r = flat.route("goat")
    assert len(r.classes) == 3 and max(c.weight for c in r.classes) < 0.35
    strict = TextRouter(STARTER_NAMES, minilm, config=RoutingConfig(threshold=0.99), cache_dir=False)
    assert not strict.route("rain on a roof").matched and strict.route("rain").matched  # exact names still win
    with pytest.raises(QueryError, match="temperature"):
        RoutingConfig(temperature=0)
    with pytest.raises(QueryError, match="empty text"):
        sharp.route("  ")


# ---------------------------------------------------------------------------- conditions


def test_label_bank_mix_rescales_to_the_target_norm():
    bank = _bank(["A", "B", "C"])
    mean_norm = float(bank.centroids.norm(dim=-1).mean())
    assert bank.target_norm == pytest.approx(mean_norm)
    c = bank.mix({"A": 3.0, "C": 1.0})
    expected_dir = 0.75 * bank.vector("A") + 0.25 * bank.vector("C")
    torch.testing.assert_close(c, expected_dir * (mean_norm / expected_dir.norm()))
    fixed = _bank(["A", "B"], latent_norm=7.5)
    assert float(fixed.mix({"B": 1.0}).norm()) == pytest.approx(7.5)
    with pytest.raises(QueryError, match="not a class"):
        bank.mix({"Z": 1.0})
    with pytest.raises(QueryError, match="> 0"):
        bank.mix({"A": 0.0})
    with pytest.raises(QueryError, match="latent_norm"):
        _bank(["A"], latent_norm=-1.0)


def test_build_label_bank_records_the_training_latent_norm():
    lat = torch.tensor([[3.0, 4.0], [0.0, 1.0], [6.0, 8.0]])
    bank = build_label_bank(lat, [["a"], ["a"], ["b"]])
    assert bank.config.latent_norm == pytest.approx((5 + 1 + 10) / 3)
    assert float(bank.mix({"a": 1.0}).norm()) == pytest.approx(16 / 3)


def test_text_condition_is_the_norm_matched_mix_of_routed_centroids(minilm):
    bank = _bank(STARTER_NAMES, latent_norm=7.5)
    enc = QueryEncoder(text_encoder=minilm, label_bank=bank, routing_cache=False)
    res = enc.encode(Query.build(text="goat"))
    part = res.positives[0]
    assert part.source == "text -> classes" and len(part.routing.classes) >= 2
    torch.testing.assert_close(res.condition, bank.mix(part.routing.weights))
    assert float(res.condition.norm()) == pytest.approx(7.5, rel=1e-5)
    d = res.describe()["routing"][0]
    assert d["kind"] == "text" and d["classes"][0]["name"] == "Sheep"
    assert sum(c["weight"] for c in d["classes"]) == pytest.approx(1.0, abs=1e-3)
    lines = res.report_lines(verbose=True)
    assert lines[0].startswith("+ text 'goat' (weight 1) -> Sheep 0.") and "via Goat, 2 hops" in lines[1]


def test_no_match_falls_back_to_the_projection_or_fails_clearly(minilm):
    bank = _bank(STARTER_NAMES)
    torch.manual_seed(0)
    proj = TextProjection(TextProjectionConfig(text_dim=384, latent_dim=8, hidden_dim=16)).eval()
    enc = QueryEncoder(text_encoder=minilm, projection=proj, label_bank=bank, routing_cache=False)
    res = enc.encode(Query.build(text="xqzv blorf"))
    assert res.positives[0].source == "text -> projection" and not res.positives[0].routing.matched
    torch.testing.assert_close(res.condition, proj.encode_texts(minilm, ["xqzv blorf"])[0])
    assert "does not look like English" in res.notes[0]  # gibberish reads as another language
    assert "'xqzv blorf' matches no class of the label bank well" in res.notes[1]
    assert "learned text projection" in res.notes[1] and res.notes[1] in res.report_lines()

    no_proj = QueryEncoder(text_encoder=minilm, label_bank=bank, routing_cache=False)
    with pytest.raises(QueryError, match="matches no class of the label bank well.*no text projection"):
        no_proj.encode(Query.build(text="xqzv blorf"))
    # a label the bank lacks is routed like text, and says so
    lab = no_proj.encode(Query.build(label="Bark"))
    assert lab.positives[0].source == "label -> classes" and lab.positives[0].routing.classes[0].name == "Canidae, dogs, wolves"
    assert re.search(r"label 'Bark' is not in the label bank( \(did you mean [^)]*\))?; routed as text to Canidae, dogs, wolves",
                     lab.notes[0])


# ---------------------------------------------------------------------------- class-text embeddings


class CountingEncoder:
    """A stand-in text encoder: deterministic unit vectors per text; records what it was asked to encode."""

    def __init__(self, spec: str, dim: int = 4):
        self.spec, self.dim, self.calls = spec, dim, []

    def encode(self, texts):
        self.calls.append(list(texts))
        rows = [torch.tensor([float(len(t)), float(sum(map(ord, t)) % 7), 1.0, float(t.count(" "))]) for t in texts]
        return torch.nn.functional.normalize(torch.stack(rows), dim=-1)


def test_embedding_store_caches_on_disk_and_survives_an_unwritable_folder(tmp_path, monkeypatch):
    enc = CountingEncoder(f"counting-{tmp_path.name}")
    store = TextEmbeddingStore(enc, cache_dir=tmp_path / "cache", use_shipped=False)
    first = store.get(["dog", "rain", "dog"])
    assert enc.calls == [["dog", "rain"]] and store.last_sources == {"computed": 2}
    assert list((tmp_path / "cache").glob("*.safetensors")) and not list((tmp_path / "cache").glob("*.part"))
    monkeypatch.setattr(routing_mod, "_MEMORY", {})  # a new process
    again = TextEmbeddingStore(enc, cache_dir=tmp_path / "cache", use_shipped=False)
    torch.testing.assert_close(again.get(["rain", "dog"]), first[[1, 0]])
    assert enc.calls == [["dog", "rain"]] and again.last_sources == {"cache": 2}
    again.get(["wind"])  # only the new text is encoded, and added to the file
    assert enc.calls[-1] == ["wind"]
    monkeypatch.setattr(routing_mod, "_MEMORY", {})
    assert TextEmbeddingStore(enc, cache_dir=tmp_path / "cache", use_shipped=False).get(["wind", "dog"]).shape == (2, 4)
    assert len(enc.calls) == 2
    # a cache "folder" below a file cannot be created: no crash, no cache
    (tmp_path / "file").write_text("x")
    monkeypatch.setattr(routing_mod, "_MEMORY", {})
    blocked = TextEmbeddingStore(enc, cache_dir=tmp_path / "file" / "cache", use_shipped=False)
    assert blocked.get(["dog"]).shape == (1, 4) and blocked.last_sources == {"computed": 1}
    # a corrupt cache file is ignored
    for f in (tmp_path / "cache").glob("*.safetensors"):
        f.write_bytes(b"garbage")
    monkeypatch.setattr(routing_mod, "_MEMORY", {})
    assert TextEmbeddingStore(enc, cache_dir=tmp_path / "cache", use_shipped=False).get(["dog"]).shape == (1, 4)


def test_shipped_embeddings_cover_every_routing_text_and_equal_recomputation(minilm):
    table = routing_mod._read_embedding_file(
        resources.files("separator.query").joinpath("data", SHIPPED_EMBEDDINGS), encoder_key(minilm)
    )
    texts = routing_texts()
    missing = [t for t in texts if t not in table]
    assert not missing, f"{len(missing)} routing texts lack shipped embeddings (e.g. {missing[:3]}); regenerate with " \
        "`python -m separator.query.routing --write-embeddings`"
    g = torch.Generator().manual_seed(0)
    sample = [texts[i] for i in torch.randperm(len(texts), generator=g)[:24].tolist()]
    torch.testing.assert_close(torch.stack([table[t] for t in sample]), minilm.encode(sample), rtol=0, atol=2e-3)


@pytest.mark.slow
def test_all_shipped_embeddings_equal_recomputation(minilm):
    table = routing_mod._read_embedding_file(
        resources.files("separator.query").joinpath("data", SHIPPED_EMBEDDINGS), encoder_key(minilm)
    )
    texts = routing_texts()
    torch.testing.assert_close(torch.stack([table[t] for t in texts]), minilm.encode(texts), rtol=0, atol=2e-3)


# ---------------------------------------------------------------------------- the shipped model


@pytest.mark.skipif(not (MODEL_DIR / "config.json").is_file(), reason=f"{MODEL_DIR} is not packaged")
def test_shipped_starter_routes_vocals_to_its_vocal_stem_class():
    from separator.api import Separator

    sep = Separator.from_pretrained(device="cpu")
    res = sep.encode_query(text="vocals")
    part = res.positives[0]
    assert part.source == "text -> classes" and part.routing.weights == {VOCALS: 1.0}
    bank = sep.query_encoder.label_bank
    assert float(res.condition.norm()) == pytest.approx(bank.target_norm, rel=1e-5)
    assert f"+ text 'vocals' (weight 1) -> {VOCALS} 1.00" in res.report_lines(verbose=True)
    singing = sep.encode_query(text="singing").positives[0].routing
    assert singing.classes[0].name == VOCALS


@pytest.mark.skipif(not (MODEL_DIR / "config.json").is_file(), reason=f"{MODEL_DIR} is not packaged")
def test_cli_embed_reports_the_routing(tmp_path):
    from separator.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["embed", "--model", str(MODEL_DIR), "--text", "dog barking", "--out", str(tmp_path / "d.safetensors"), "--verbose"])
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    assert "+ text 'dog barking' (weight 1) -> Canidae, dogs, wolves 1.00" in out and "synonym 'dog barking' via Dog" in out
    r = runner.invoke(app, ["embed", "--model", str(MODEL_DIR), "--text", "xqzv blorf", "--out", str(tmp_path / "x.safetensors")])
    assert r.exit_code == 0, r.output  # the shipped model has a text projection to fall back on, and says so
    assert "matches no class of the label bank well" in " ".join(r.output.split())
