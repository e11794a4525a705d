"""The expert-functionals recogniser as a kind (`model.kind: expert`, the default recipe).

The recipe around the logistic heads of `stlser.heads`: functionals of each utterance (by
default stlser's own `compact` 96 and `large` 4,282; openSMILE sets with the extra) normalised per speaker
with that speaker's label-free statistics (unseen speakers at inference get the training set's
global statistics), optional speed-perturbed copies of the training clips (each
(speaker, factor) normalised as a speaker of its own), optional fine-tuning from a pretrained
expert model (``model.init``, e.g. ``base``, the general model shipped in the package), one
logistic head per set, log-probabilities averaged.

The artefact (`model.pt`, format ``stlser-expert/1``) holds tensors and plain values only and
loads with ``weights_only=True``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stlser import featuresets
from stlser.config import ExpertConfig
from stlser.heads import LogisticHeads, Prior, fit_heads
from stlser.kinds import functionals
from stlser.kinds.base import FoldOutput
from stlser.safety import safe_torch_load

FORMAT = "stlser-expert/1"
SYSTEM = "expert functionals + logistic heads"
log = logging.getLogger(__name__)


# ------------------------------------------------------------------ artefact (model.pt)
def save(
    path: str | Path, model: LogisticHeads, cfg: Any, labels: list[str], meta: dict[str, Any]
) -> Path:
    """Write the `stlser-expert/1` artefact atomically (tensors and plain values only)."""
    return functionals.save_artefact(path, FORMAT, model, cfg, labels, meta)


model_sets = functionals.FunctionalsKind.sets


def from_artefact(path: str | Path, art: dict | None = None) -> tuple[LogisticHeads, dict]:
    """Rebuild the model from its artefact (loaded safely unless `art` is given)."""
    return functionals.read_artefact(path, art, FORMAT, LogisticHeads)  # type: ignore[return-value]


def read_init(spec: str, sets: list[str]) -> tuple[Path, dict[str, Any]]:
    """The expert artefact ``model.init`` names (``"base"`` or a path), checked to be an expert
    model over the same functional sets; ValueError says what differs."""
    from stlser.recognizer import resolve_init_path

    path = resolve_init_path(spec)
    art = safe_torch_load(path, "model.init artefact")
    if not isinstance(art, dict) or art.get("format") != FORMAT:
        raise ValueError(
            f"model.init {spec} is incompatible: {path} is not an expert model (format "
            f"{art.get('format') if isinstance(art, dict) else None!r}), this run is "
            "model.kind=expert (use a model.pt written by an expert run, or 'base')"
        )
    theirs = model_sets(art)
    if theirs != list(sets):
        raise ValueError(
            f"model.init {spec} is incompatible: model.functionals {theirs} (init) != "
            f"{list(sets)} (this run)"
        )
    return path, art


def init_priors(
    spec: str, sets: list[str], labels: list[str], corpus: str | None = None
) -> list[Prior]:
    """The heads of a pretrained expert model as fine-tuning priors for a run with functional
    `sets` and `labels` (matched by name; the run's labels the model lacks start from zero).

    A model trained on the run's `corpus` (e.g. ``base`` on EmoDB) has heard its test speakers:
    that is logged as a warning, since scores are then not speaker-independent."""
    path, art = read_init(spec, sets)
    base, art = from_artefact(path, art)
    names = list(art["labels"])
    cols = [names.index(v) if v in names else -1 for v in labels]
    if all(c < 0 for c in cols):
        raise ValueError(
            f"model.init {spec} is incompatible: no label in common (init {names}, "
            f"this run {list(labels)})"
        )
    meta = art.get("meta") or {}
    seen = meta.get("corpora") or [meta.get("corpus")]
    if corpus is not None and corpus in seen:
        log.warning(
            f"model.init {spec} was trained on {corpus} itself: its speakers, the test speakers "
            "of this run among them, were seen in pretraining, so these scores are not "
            "speaker-independent (for an honest score, pretrain without this corpus: "
            "python -m benchmarks.bench_accuracy --systems finetuned does)"
        )
    new = [v for v, c in zip(labels, cols, strict=True) if c < 0]
    log.info(
        f"model.init: {len(base.heads)} heads from {path}; labels mapped "
        f"{[v for v in labels if v not in new]}, new {new}"
    )
    return [Prior(h, cols) for h in base.heads]


# ------------------------------------------------------------------------------ the kind
def dropped_columns(m: ExpertConfig) -> np.ndarray | None:
    """With ``model.level: drop``, the columns a recording gain moves (else None)."""
    if not featuresets.relative_level(m):
        return None
    from stlser.features.functionals import front_end

    shifted, scaled = featuresets.level_columns(front_end("+".join(m.functionals)).names)
    return shifted | scaled


class ExpertKind(functionals.FunctionalsKind):
    name = "expert"
    config = ExpertConfig
    formats = (FORMAT,)
    system = SYSTEM

    def check(self, cfg: Any) -> None:
        if cfg.model.init:
            read_init(cfg.model.init, list(cfg.model.functionals))

    def prepare(self, cfg: Any, df: Any, labels: list[str]) -> dict[str, Any]:
        """Functionals of every row (and of its speed-perturbed copies: rows n, 2n, … copy
        rows 0 … n−1), labels, speakers (``spk@0.9`` for a copy), fine-tuning priors."""
        from stlser import degenerate

        m = cfg.model
        sets = list(m.functionals)
        rel = featuresets.relative_level(m)  # own sets relative to each clip's level
        log.info(f"{cfg.name}: functionals {'+'.join(sets)} of {len(df)} utterances")
        X = functionals.load_matrix(df, sets, cfg.cache_dir, cfg.train.progress, relative=rel)
        X = X.astype(np.float64)
        speakers = df["speaker"].astype(str).to_numpy()
        index = {lab: i for i, lab in enumerate(labels)}
        y = np.asarray([index[v] for v in df["label"].astype(str)])
        glob = sorted(degenerate.global_speakers(df, cfg.features))
        n = len(X)
        if m.speeds:
            log.info(f"speed-perturbed copies {m.speeds} of every clip join the training rows")
            copies = [
                functionals.load_matrix(df, sets, cfg.cache_dir, cfg.train.progress, a, rel)
                for a in m.speeds
            ]
            X = np.concatenate([X, *copies]).astype(np.float64)
            tags = [f"@{a}" for a in m.speeds]
            speakers = np.concatenate(
                [speakers] + [np.asarray([v + t for v in speakers]) for t in tags]
            )
            glob = glob + [g + t for t in tags for g in glob]
            y = np.tile(y, len(m.speeds) + 1)
        priors = init_priors(m.init, sets, labels, cfg.data.corpus) if m.init else None
        return {
            "X": X,
            "n": n,
            "y": y,
            "speakers": speakers,
            "glob": glob,
            "mode": cfg.features.normalize if cfg.features.normalize != "utterance" else "none",
            "dims": functionals.set_dims(sets),
            "priors": priors,
            "labels": labels,
            "pos": {u: i for i, u in enumerate(df["utt_id"].astype(str))},
        }

    def fit(self, cfg: Any, data: dict[str, Any], fold: Any, out: Path, *_: Any) -> FoldOutput:
        """Normalise with the training speakers' statistics, fit the heads
        (`stlser.heads.fit_heads`), save the artefact, score the test rows."""
        from stlser.features import normalize_functionals

        tr, va, te = functionals.fold_rows(data["pos"], fold)
        X, n = data["X"], data["n"]
        fit = np.concatenate([tr, va])
        copies = None
        if len(X) > n:
            k = np.arange(1, len(X) // n)[:, None] * n
            copies = ((tr + k).ravel(), (va + k).ravel())
        every = fit if copies is None else np.concatenate([fit, *copies])
        Z, _ = normalize_functionals(X, data["speakers"], data["mode"], every, data["glob"])
        m = cfg.model
        drop = dropped_columns(m)
        if drop is not None:
            Z[:, drop] = 0.0  # constant inputs: the other weights are fitted without them
        model, sel = fit_heads(
            Z,
            data["y"],
            data["dims"],
            len(data["labels"]),
            tr,
            va,
            list(m.l2_grid),
            data["priors"],
            m.l2_mode,
            copies,
        )
        if drop is not None:
            model.drop_inputs(drop)  # a prior (model.init) may have left weights there
        raw = torch.as_tensor(X[fit], dtype=torch.float32)
        model.mean.copy_(raw.mean(0))
        model.std.copy_(raw.std(0).clamp_min(1e-5))
        with torch.no_grad():
            probs = torch.softmax(model.log_probs(torch.as_tensor(Z[te], dtype=torch.float32)), -1)
        meta = {"corpus": cfg.data.corpus, "fold": fold.name, "seed": cfg.seed, **sel}
        save(out / "model.pt", model, cfg, data["labels"], meta)
        return FoldOutput(probs.numpy(), dict(sel), {"best_epoch": None, "val_ua": sel["val_ua"]})

    def report_facts(self, cfg: Any, data: Any, infos: list[dict]) -> dict[str, Any]:
        m = cfg.model
        dims = functionals.set_dims(list(m.functionals))
        n_classes = len(data["labels"])
        return {
            "normalize": data["mode"],
            "features": " + ".join(f"{s} ({d})" for s, d in zip(m.functionals, dims, strict=True)),
            "classifier": "one class-balanced logistic regression per set, log-probabilities averaged",
            "selection": (
                "L2 per head by UA on the validation speakers; refit on train+val"
                if m.l2_mode == "select"
                else "each head the average of its fits at every L2 of the grid on train+val"
            ),
            "n_params": int(sum(p.numel() for p in LogisticHeads(dims, n_classes).parameters())),
            "speed_copies": list(m.speeds),
        }

    def read_model(self, path: str | Path, art: dict[str, Any]) -> tuple[LogisticHeads, dict]:
        return from_artefact(path, art)

    def speaker_probs(self, model: LogisticHeads, z: torch.Tensor) -> torch.Tensor:
        return torch.softmax(model.log_probs(z), -1)
