"""Training the text projection (and building the label bank) from a table of mined segment latents.

Input format (the "segment table"), either of:

1. a mining output folder of ``qsep mine`` (``mining.json`` + shards, read with
   :func:`sed.mining.load_manifest`): each segment's text label is its mined label (``label_name``), its latent
   the stored one; ``latents`` is not needed;
2. ``manifest``: a CSV file, one row per segment, with a header. Columns:

  - ``labels`` (required; ``label`` is accepted too): the class names of the segment separated by ``;``
    (AudioSet names contain commas, so ``,`` is NOT a separator), e.g. ``Dog;Bark``;
  - ``caption`` (optional): free text describing the segment (empty = none);
  - ``latent_index`` (optional): row of the latents file holding this segment's latent (default: the CSV row
    number, so the two files are row-aligned);
  - anything else (``clip_id``, ``start``, ``end``, ``confidence``, ...) is ignored, so the mining manifests can be
    used as they are.

* ``latents``: ``.safetensors`` or ``.npz`` holding a float tensor ``"latents"`` of shape
  ``(n_segments, latent_dim)``: the frozen detector's latent of each segment (the query-path latent).

Training (:func:`train_projection`, through :func:`qsep_core.training.run_training`): class-balanced batches of
(text, latent) pairs. A segment's text is one of its labels (or a
comma-separated part of an AudioSet name) in a random prompt template, or its caption with probability
``caption_probability``. Loss: symmetric InfoNCE (:func:`separator.losses.info_nce`) with the projection's learnable temperature; pairs that share the
label (or the caption) count as positives on both sides (multi-positive soft targets), so same-class items in a
batch are not pushed apart.

Validation (:func:`evaluate_projection`): on held-out segments of the training classes ("seen") and on every
segment of the ``held_out_classes`` (never used to train the projection, "held_out"):

* text->audio retrieval recall@K: for each class, the text query ranks all segments of the evaluation set; a hit
  when one of the top K segments carries the class; averaged over classes;
* zero-shot classification accuracy: each segment is given the class whose text condition is closest (cosine, in
  the centred latent space) among the evaluation set's classes; correct when the segment carries that class.

The saved projection is the one trained on the training split only (so the held-out numbers describe it), unless
``refit_on_all`` asks for a second run on every segment after validation. The label bank is built from every
segment of every class.
"""
from __future__ import annotations

import csv
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from qsep_core.config import ConfigError, to_dict
from qsep_core.training import RunConfig, begin_run, run_training, warmup_scheduler
from separator.losses import info_nce

from .errors import QueryError
from .labels import LabelBank, build_label_bank, label_bank_config_dict
from .text import TextEncoder, TextProjection, TextProjectionConfig, load_text_encoder

__all__ = [
    "DEFAULT_TEMPLATES",
    "TextProjectionTrainConfig",
    "SegmentTable",
    "load_segment_table",
    "class_texts",
    "ProjectionModule",
    "train_projection",
    "evaluate_projection",
    "train_text_projection",
]

LABEL_SEPARATOR = ";"
#: prompt templates used in training ("{}" is the class name)
DEFAULT_TEMPLATES = (
    "{}",
    "the sound of {}",
    "the sound of a {}",
    "{} sounds",
    "a recording of {}",
    "{} can be heard",
    "audio of {}",
    "a clip with {}",
)


@dataclass
class TextProjectionTrainConfig:
    """Config of :func:`train_text_projection` (YAML files in ``configs/`` override these fields).

    Attributes:
        manifest: mining output folder, or CSV segment table (see the module docstring).
        latents: ``.safetensors`` / ``.npz`` with ``latents (n, latent_dim)`` (CSV manifests only).
        model: model folder to add the ``text_projection`` (and ``label_bank``) components to ("" = none).
        out: folder for a standalone model holding only the new components ("" = none). One of model/out needed.
        overwrite: allow ``out`` to replace an existing folder.
        text_encoder: text-encoder spec (see :func:`separator.query.text.load_text_encoder`).
        hidden_dim, dropout, init_temperature: projection architecture (:class:`TextProjectionConfig`).
        templates: training prompt templates.
        inference_templates: templates averaged with the raw text at inference (stored with the projection).
        use_captions / caption_probability: use the ``caption`` column when present.
        held_out_classes: classes never used to train the projection (zero-shot validation).
        val_fraction: fraction of each training class's segments kept for the "seen" validation.
        steps, batch_size, lr, weight_decay, warmup_steps: optimisation (AdamW, linear warm-up then cosine decay
            to 0; :func:`qsep_core.training.lr_scale`).
        seed: seeds the split, the sampling, the initialisation and dropout (through the training runner).
        device: torch device for training (``cpu``, ``cuda``, ``cuda:N``; see :meth:`run_config`).
        label_bank: also build and save a label bank from all segments.
        log_every: print progress every N steps (0: silent).
        refit_on_all: after validation, train again on every segment (held-out classes and validation
            segments included) and save that projection; the reported metrics describe the first run.
    """

    manifest: str = ""
    latents: str = ""
    model: str = ""
    out: str = ""
    overwrite: bool = False
    text_encoder: str = "minilm"
    hidden_dim: int = 512
    dropout: float = 0.1
    init_temperature: float = 0.07
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    inference_templates: tuple[str, ...] = ("the sound of {}",)
    use_captions: bool = True
    caption_probability: float = 0.3
    held_out_classes: tuple[str, ...] = ()
    val_fraction: float = 0.1
    steps: int = 2000
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    seed: int = 0
    device: str = "cpu"
    label_bank: bool = True
    log_every: int = 100
    refit_on_all: bool = False

    def run_config(self) -> RunConfig:
        """The runner settings of this training: one device (``device``), ``seed``, no checkpoints, no resume.

        Raises:
            ConfigError: ``device`` is not ``cpu``, ``cuda`` or ``cuda:N``.
        """
        dev = str(self.device).strip()
        if dev == "cpu":
            accelerator, devices = "cpu", 1
        elif dev == "cuda":
            accelerator, devices = "gpu", 1
        elif dev.startswith("cuda:") and dev[5:].isdigit():
            accelerator, devices = "gpu", [int(dev[5:])]
        else:
            raise ConfigError(f"device must be cpu, cuda or cuda:N, got {self.device!r}")
        return RunConfig(accelerator=accelerator, devices=devices, precision="32-true", seed=self.seed, resume=False,
                         checkpoint_every_n_steps=0, log_every_n_steps=max(1, self.log_every or 50), progress=False)


@dataclass
class SegmentTable:
    """Latents of mined segments and their labels.

    Attributes:
        latents: ``(n, latent_dim)`` float32.
        labels: per segment, its class names.
        captions: per segment, a caption or None.
    """

    latents: torch.Tensor
    labels: list[list[str]]
    captions: list[str | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.latents.ndim != 2:
            raise QueryError(f"latents must be (n, latent_dim), got {tuple(self.latents.shape)}")
        if len(self.labels) != self.latents.shape[0]:
            raise QueryError(f"{self.latents.shape[0]} latents but {len(self.labels)} label rows")
        if not self.captions:
            self.captions = [None] * len(self.labels)

    @property
    def classes(self) -> list[str]:
        return sorted({c for row in self.labels for c in row})

    def subset(self, idx: Sequence[int]) -> "SegmentTable":
        idx = list(idx)
        return SegmentTable(self.latents[idx], [self.labels[i] for i in idx], [self.captions[i] for i in idx])


def _read_latents(path: Path) -> torch.Tensor:
    if not path.is_file():
        raise QueryError(f"latents file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        data = load_file(str(path))
        arr = data.get("latents")
    elif path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            arr = torch.from_numpy(np.asarray(z["latents"])) if "latents" in z.files else None
    else:
        raise QueryError(f"latents must be a .safetensors or .npz file, got {path.name!r}")
    if arr is None:
        raise QueryError(f"{path} holds no 'latents' array")
    return arr.float()


def _load_mining_folder(folder: Path) -> SegmentTable:
    from qsep_core.manifest import load_manifest  # lazy: only for mining folders

    m = load_manifest(folder)
    seg = m.segments
    names = m.class_names or []
    labels = []
    for lab, name in zip(seg["label"].tolist(), seg["label_name"].tolist()):
        text = str(name).strip() or (names[int(lab)] if names and int(lab) < len(names) else str(lab))
        labels.append([text])
    captions = [str(c).strip() or None for c in seg["caption"]] if "caption" in seg.columns else None
    return SegmentTable(m.latents.float(), labels, captions or [])


def load_segment_table(manifest: str | Path, latents: str | Path | None = None) -> SegmentTable:
    """Read a segment table: a mining output folder, or a CSV manifest + latents file (see the module docstring)."""
    manifest = Path(manifest)
    if manifest.is_dir():
        return _load_mining_folder(manifest)
    if not latents:
        raise QueryError(f"{manifest}: a CSV manifest needs a latents file (.safetensors / .npz)")
    latents = Path(latents)
    if not manifest.is_file():
        raise QueryError(f"manifest not found: {manifest}")
    lat = _read_latents(latents)
    with manifest.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise QueryError(f"{manifest} has no rows")
    cols = set(rows[0])
    label_col = "labels" if "labels" in cols else "label" if "label" in cols else None
    if label_col is None:
        raise QueryError(f"{manifest} has no 'labels' column (columns: {sorted(cols)})")
    labels, captions, index = [], [], []
    for r_i, row in enumerate(rows):
        labs = [x.strip() for x in (row[label_col] or "").split(LABEL_SEPARATOR) if x.strip()]
        if not labs:
            raise QueryError(f"{manifest}: row {r_i + 2} has no label")
        labels.append(labs)
        cap = (row.get("caption") or "").strip()
        captions.append(cap or None)
        index.append(int(row["latent_index"]) if row.get("latent_index", "") not in ("", None) else r_i)
    if max(index) >= lat.shape[0]:
        raise QueryError(f"{manifest} refers to latent row {max(index)} but {latents} has {lat.shape[0]} rows")
    if "latent_index" not in cols and lat.shape[0] != len(rows):
        raise QueryError(f"{manifest} has {len(rows)} rows but {latents} has {lat.shape[0]} latents (add a latent_index column)")
    return SegmentTable(lat[index], labels, captions)


def class_texts(name: str, templates: Sequence[str]) -> list[str]:
    """Training texts of a class: each name variant (full name and comma parts) in each template."""
    variants = [name] + [p.strip() for p in name.split(",") if p.strip() and p.strip() != name]
    out: list[str] = []
    for v in variants:
        for t in templates:
            s = t.format(v)
            if s not in out:
                out.append(s)
    return out


def _split(table: SegmentTable, held_out: Sequence[str], val_fraction: float, seed: int) -> tuple[list[int], list[int], list[int]]:
    """(train, seen-val, held-out) segment indices. Segments carrying a held-out class go to held-out only."""
    held = set(held_out)
    rng = random.Random(seed)
    held_idx = [i for i, row in enumerate(table.labels) if held & set(row)]
    rest = [i for i, row in enumerate(table.labels) if not held & set(row)]
    by_first: dict[str, list[int]] = {}
    for i in rest:
        by_first.setdefault(table.labels[i][0], []).append(i)
    train, val = [], []
    for _, idx in sorted(by_first.items()):
        idx = idx[:]
        rng.shuffle(idx)
        n_val = int(math.floor(len(idx) * val_fraction)) if len(idx) > 1 else 0
        val += idx[:n_val]
        train += idx[n_val:]
    return sorted(train), sorted(val), sorted(held_idx)


def _index_table(groups: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged index lists -> (padded table (n_groups, max_len), counts (n_groups,)) for vectorised sampling."""
    if any(len(g) == 0 for g in groups):
        raise QueryError("a class has no segment or no prompt text")
    width = max(len(g) for g in groups)
    table = torch.zeros(len(groups), width, dtype=torch.long)
    for i, g in enumerate(groups):
        table[i, : len(g)] = torch.tensor(g)
    return table, torch.tensor([len(g) for g in groups], dtype=torch.float32)


class _BatchIndices(torch.utils.data.IterableDataset):
    """``steps`` class-balanced batches of indices, drawn in order from one generator seeded by ``seed``.

    Each item (one batch): ``cls`` (batch,) class of each pair, ``seg`` (batch,) segment, ``prm`` (batch,) prompt,
    ``cap`` (batch,) caption index or -1, ``use_cap`` (batch,) whether the pair's text is the caption.
    The sequence depends only on the seed (iterate it in the main process: ``num_workers=0``).
    """

    def __init__(self, steps: int, batch_size: int, seed: int, caption_probability: float, seg_table: torch.Tensor,
                 seg_count: torch.Tensor, prompt_table: torch.Tensor, prompt_count: torch.Tensor, seg_cap: torch.Tensor):
        super().__init__()
        self.steps, self.batch_size, self.seed, self.p_cap = steps, batch_size, seed, caption_probability
        self.seg_table, self.seg_count, self.prompt_table, self.prompt_count = seg_table, seg_count, prompt_table, prompt_count
        self.seg_cap = seg_cap

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed)
        B, n_classes = self.batch_size, self.seg_table.shape[0]
        for _ in range(self.steps):
            # class-balanced batch: a class, then one of its segments, then a text for it
            cls = torch.randint(n_classes, (B,), generator=gen)
            seg = self.seg_table[cls, (torch.rand(B, generator=gen) * self.seg_count[cls]).long()]  # (batch,)
            prm = self.prompt_table[cls, (torch.rand(B, generator=gen) * self.prompt_count[cls]).long()]  # (batch,)
            cap = self.seg_cap[seg]
            use_cap = (torch.rand(B, generator=gen) < self.p_cap) & (cap >= 0)
            cap = torch.where(use_cap, cap, torch.full_like(cap, -1))
            yield {"cls": cls, "seg": seg, "prm": prm, "cap": cap, "use_cap": use_cap}


class _ProjectionData(L.LightningDataModule):
    def __init__(self, batches: _BatchIndices):
        super().__init__()
        self.batches = batches

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        # its own generator: creating the loader's iterator must not draw from the global RNG (dropout's)
        return torch.utils.data.DataLoader(self.batches, batch_size=None, num_workers=0, generator=torch.Generator())


class ProjectionModule(L.LightningModule):
    """Trains a :class:`TextProjection` with the multi-positive :func:`separator.losses.info_nce`.

    Args:
        proj: the projection (latent statistics already set).
        prompt_emb: ``(n_prompts, text_dim)`` text embeddings of the class prompts.
        cap_emb: ``(n_captions, text_dim)`` text embeddings of the captions (0 rows: none).
        audio_dir: ``(n_segments, latent_dim)`` fixed audio directions of the segments.
        member: ``(n_segments, n_classes)`` bool, segment carries class.
        seg_cap: ``(n_segments,)`` caption index of each segment, -1: none.
        cfg: optimisation settings (``lr``, ``weight_decay``, ``warmup_steps``, ``steps``, ``log_every``).
        log: progress lines go here.
    """

    def __init__(self, proj: TextProjection, prompt_emb: torch.Tensor, cap_emb: torch.Tensor, audio_dir: torch.Tensor,
                 member: torch.Tensor, seg_cap: torch.Tensor, cfg: TextProjectionTrainConfig,
                 log: Callable[[str], None] | None = None):
        super().__init__()
        self.proj, self.cfg, self.log_line = proj, cfg, log
        for name, t in (("prompt_emb", prompt_emb), ("cap_emb", cap_emb), ("audio_dir", audio_dir), ("member", member),
                        ("seg_cap", seg_cap)):
            self.register_buffer(name, t, persistent=False)
        self.losses: list[float] = []

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        cls, seg, prm, cap, use_cap = batch["cls"], batch["seg"], batch["prm"], batch["cap"], batch["use_cap"]
        t_emb = torch.where(
            use_cap[:, None], self.cap_emb[cap.clamp(min=0)] if len(self.cap_emb) else self.prompt_emb[prm], self.prompt_emb[prm]
        )  # (batch, text_dim)
        a_dir = self.audio_dir[seg]  # (batch, latent_dim)
        # positives: audio j carries the class of text i (class prompts), or has the same caption (captions)
        pos = self.member[seg][:, cls].T.clone()  # (batch_text, batch_audio)
        if bool(use_cap.any()):
            same_cap = cap[:, None] == self.seg_cap[seg][None, :]
            pos[use_cap] = same_cap[use_cap]
        loss = info_nce(text=self.proj.direction(t_emb), audio=a_dir, scale=self.proj.scale(), positives=pos)
        self.losses.append(loss.item())
        step, every = len(self.losses), self.cfg.log_every
        if self.log_line is not None and every and step % every == 0:
            self.log_line(f"step {step}/{self.cfg.steps} loss {np.mean(self.losses[-every:]):.4f} "
                          f"temperature {self.proj.temperature:.4f}")
        return loss

    def configure_optimizers(self):
        cfg = self.cfg
        opt = torch.optim.AdamW(self.proj.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        # linear warm-up, then cosine decay to 0 at the last step
        return {"optimizer": opt, "lr_scheduler": warmup_scheduler(
            opt, warmup_steps=cfg.warmup_steps, total_steps=cfg.steps, cosine=True, min_ratio=0.0)}


def train_projection(
    table: SegmentTable,
    cfg: TextProjectionTrainConfig,
    text_encoder: TextEncoder,
    log: Callable[[str], None] | None = None,
) -> tuple[TextProjection, dict[str, float]]:
    """Train a projection on ``table`` (every segment is used; split beforehand). Returns (projection, stats).

    Runs :class:`ProjectionModule` through :func:`qsep_core.training.run_training` on ``cfg.device``, seeded
    by ``cfg.seed`` (the same seed gives the same weights). Stats: ``train_loss`` (mean of the last 50 steps),
    ``temperature``, ``classes``.

    Raises:
        ConfigError: ``steps < 1`` or ``batch_size < 2``.
        QueryError: a class has no segment or no prompt text.
    """
    if cfg.steps < 1 or cfg.batch_size < 2:
        raise ConfigError(f"steps must be >= 1 and batch_size >= 2, got {cfg.steps}, {cfg.batch_size}")
    run = cfg.run_config()
    begin_run(run)  # seeds the initialisation and dropout
    classes = table.classes
    pcfg = TextProjectionConfig(
        text_dim=text_encoder.dim,
        latent_dim=int(table.latents.shape[1]),
        hidden_dim=cfg.hidden_dim,
        dropout=cfg.dropout,
        init_temperature=cfg.init_temperature,
        text_encoder=text_encoder.spec,
        templates=tuple(cfg.inference_templates),
    )
    proj = TextProjection(pcfg)
    proj.set_latent_stats(table.latents)

    # every class prompt is encoded once: (n_prompts, text_dim), with the class of each prompt
    prompts, prompt_class = [], []
    for c_i, c in enumerate(classes):
        texts = class_texts(c, cfg.templates)
        prompts += texts
        prompt_class += [c_i] * len(texts)
    prompt_emb = text_encoder.encode(prompts)  # (n_prompts, text_dim)
    prompt_table, prompt_count = _index_table([[i for i, c in enumerate(prompt_class) if c == k] for k in range(len(classes))])
    caps = sorted({c for c in table.captions if c}) if cfg.use_captions else []
    cap_emb = text_encoder.encode(caps) if caps else torch.zeros(0, text_encoder.dim)
    cap_id = {c: i for i, c in enumerate(caps)}
    seg_cap = torch.tensor([cap_id[c] if c in cap_id else -1 for c in table.captions])  # (n_segments,), -1: none

    audio_dir_all = proj.audio_direction(table.latents)  # (n_segments, latent_dim), fixed during training
    class_index = {c: i for i, c in enumerate(classes)}
    member = torch.zeros(len(table.labels), len(classes), dtype=torch.bool)  # (n_segments, n_classes)
    for i, row in enumerate(table.labels):
        member[i, [class_index[c] for c in row]] = True
    seg_table, seg_count = _index_table([torch.nonzero(member[:, k]).flatten().tolist() for k in range(len(classes))])

    batches = _BatchIndices(cfg.steps, cfg.batch_size, cfg.seed, cfg.caption_probability, seg_table, seg_count,
                            prompt_table, prompt_count, seg_cap)
    module = ProjectionModule(proj, prompt_emb, cap_emb, audio_dir_all, member, seg_cap, cfg, log)
    run_training(module, _ProjectionData(batches), run, out_dir=None, max_steps=cfg.steps)
    proj = proj.eval().cpu()
    losses = module.losses
    tail = losses[-max(1, min(len(losses), 50)):]
    return proj, {"train_loss": float(np.mean(tail)), "temperature": proj.temperature, "classes": float(len(classes))}


@torch.no_grad()
def evaluate_projection(
    proj: TextProjection,
    text_encoder: TextEncoder,
    table: SegmentTable,
    ks: Sequence[int] = (1, 5),
    classes: Sequence[str] | None = None,
) -> dict[str, float]:
    """Retrieval recall@K and zero-shot accuracy of ``proj`` on ``table`` (definitions in the module docstring)."""
    classes = list(classes) if classes is not None else table.classes
    if not classes or table.latents.shape[0] == 0:
        return {}
    cond = proj.encode_texts(text_encoder, classes)  # (n_classes, latent_dim)
    t_dir = F.normalize(cond - proj.latent_mean, dim=-1)
    a_dir = proj.audio_direction(table.latents.float())  # (n_segments, latent_dim)
    sim = t_dir @ a_dir.T  # (n_classes, n_segments)
    member = torch.tensor([[c in row for row in table.labels] for c in classes])  # (n_classes, n_segments)
    out: dict[str, float] = {"n_segments": float(table.latents.shape[0]), "n_classes": float(len(classes))}
    order = sim.argsort(dim=1, descending=True)
    for k in ks:
        top = order[:, : min(k, order.shape[1])]
        hits = torch.gather(member, 1, top).any(dim=1)
        out[f"recall@{k}"] = float(hits.float().mean())
    pred = sim.argmax(dim=0)  # (n_segments,)
    correct = member[pred, torch.arange(member.shape[1])]
    out["zero_shot_accuracy"] = float(correct.float().mean())
    out["chance_accuracy"] = float(1.0 / len(classes))
    return out


def train_text_projection(
    config: TextProjectionTrainConfig | dict[str, Any],
    log: Callable[[str], None] | None = None,
    text_encoder: TextEncoder | None = None,
) -> dict[str, Any]:
    """Train the text projection from a segment table, validate it, and save it into a model folder.

    Args:
        config: the training config (or a dict of its fields).
        log: progress lines go here.
        text_encoder: an already loaded encoder to use instead of loading ``config.text_encoder``.

    Returns the metrics: ``{"train": {...}, "seen": {...}, "held_out": {...}, "saved": [paths]}``.
    """
    from separator.checkpoint import Component, ModelFolder, save_model
    from qsep_core.config import from_dict

    cfg = config if isinstance(config, TextProjectionTrainConfig) else from_dict(TextProjectionTrainConfig, config)
    if not cfg.manifest or (not cfg.latents and not Path(cfg.manifest).is_dir()):
        raise ConfigError(
            "text-projection training needs `manifest` (a mining output folder, or a CSV plus `latents`, "
            "a .safetensors/.npz file)"
        )
    if not cfg.model and not cfg.out:
        raise ConfigError("say where to save the projection: `model` (an existing model folder) and/or `out`")
    if cfg.model and not ModelFolder(cfg.model).path.is_dir():
        raise ConfigError(f"`model` must be a model folder, got {cfg.model}")
    table = load_segment_table(cfg.manifest, cfg.latents)
    unknown = sorted(set(cfg.held_out_classes) - set(table.classes))
    if unknown:
        raise ConfigError(f"held_out_classes not in the manifest: {unknown}")
    train_idx, val_idx, held_idx = _split(table, cfg.held_out_classes, cfg.val_fraction, cfg.seed)
    if not train_idx:
        raise ConfigError("no training segments left after holding out classes")
    encoder = text_encoder if text_encoder is not None else load_text_encoder(cfg.text_encoder, device=cfg.device)
    train_table = table.subset(train_idx)
    proj, train_stats = train_projection(train_table, cfg, encoder, log=log)
    metrics: dict[str, Any] = {"train": train_stats, "n_train_segments": len(train_idx)}
    if val_idx:
        val = table.subset(val_idx)
        metrics["seen"] = evaluate_projection(proj, encoder, val, classes=[c for c in val.classes if c in train_table.classes])
    if held_idx:
        held = table.subset(held_idx)
        metrics["held_out"] = evaluate_projection(proj, encoder, held, classes=list(cfg.held_out_classes))

    if cfg.refit_on_all and (held_idx or val_idx):
        if log is not None:
            log("refitting the projection on every segment (metrics above describe the validated run)")
        proj, metrics["train_all"] = train_projection(table, cfg, encoder, log=log)
    metrics["saved_projection"] = "all segments" if cfg.refit_on_all else "training split"
    comps = {"text_projection": Component("text_projection", to_dict(proj.config), proj.state_dict())}
    bank: LabelBank | None = build_label_bank(table.latents, table.labels) if cfg.label_bank else None
    if bank is not None:
        comps["label_bank"] = Component("label_bank", label_bank_config_dict(bank), bank.state_dict())
    record = {"text_projection": {"config": to_dict(cfg), "metrics": metrics}}
    saved = []
    if cfg.model:
        folder = ModelFolder(cfg.model)
        existing = {
            n: Component(folder.kind(n), folder.component_config(n), folder.state_dict(n))
            for n in folder.components
            if n not in comps
        }
        _check_latent_dim(folder, int(table.latents.shape[1]))
        meta = dict(folder.metadata)
        meta.update(record)
        saved.append(str(save_model(folder.path, {**existing, **comps}, metadata=meta, overwrite=True)))
    if cfg.out:
        saved.append(str(save_model(cfg.out, comps, metadata=record, overwrite=cfg.overwrite)))
    metrics["saved"] = saved
    return metrics


def _check_latent_dim(folder: Any, dim: int) -> None:
    """If the model folder's other components declare a condition/latent size, it must equal ``dim``."""
    for name in folder.components:
        cfg = folder.component_config(name)
        for key in ("latent_dim", "condition_dim", "cond_dim"):
            v = cfg.get(key) if isinstance(cfg, dict) else None
            if isinstance(v, int) and name not in ("text_projection", "label_bank") and v != dim:
                raise ConfigError(
                    f"the latents are {dim}-d but component {name!r} of {folder.path} has {key}={v}; "
                    "use latents from this model's query encoder"
                )
