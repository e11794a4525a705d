"""The expert-functionals recogniser as a kind (`model.kind: expert`, the default recipe).

The recipe around the logistic heads of `stlser.heads`: openSMILE functionals of each
utterance (by default eGeMAPSv02 88, ComParE_2016 6,373 and IS10 1,582) normalised per speaker
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
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stlser import __version__
from stlser.config import ExpertConfig
from stlser.heads import LogisticHeads, Prior, fit_heads
from stlser.kinds import functionals
from stlser.kinds.base import FoldOutput, Kind
from stlser.safety import check_artefact, plain, rebuild, safe_torch_load, weights_digest
from stlser.utils import atomic_path

FORMAT = "stlser-expert/1"
SYSTEM = "expert functionals + logistic heads"
log = logging.getLogger(__name__)


# ------------------------------------------------------------------ artefact (model.pt)
def save(
    path: str | Path,
    model: LogisticHeads,
    cfg: Any,
    labels: list[str],
    meta: dict[str, Any],
) -> Path:
    """Write the `stlser-expert/1` artefact atomically (tensors and plain values only)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    art = {
        "format": FORMAT,
        "labels": list(labels),
        "model_config": asdict(cfg.model),
        "feature_config": asdict(cfg.features),
        "n_features": int(sum(model.dims)),
        "normalizer": {"mode": cfg.features.normalize, "applies": "global statistics"},
        "state_dict": state,
        "meta": plain({**meta, "stlser_version": __version__}),
        "weights_sha256": weights_digest(state),
    }
    with atomic_path(path) as tmp:
        torch.save(art, tmp)
    return Path(path)


def model_sets(art: dict[str, Any]) -> list[str]:
    """The functional sets an expert artefact reads, in input order."""
    return [str(s) for s in (art.get("model_config") or {}).get("functionals") or []]


def from_artefact(path: str | Path, art: dict | None = None) -> tuple[LogisticHeads, dict]:
    """Rebuild the model from its artefact (loaded safely unless `art` is given)."""
    if art is None:
        art = safe_torch_load(path, "model artefact")
    art = check_artefact(path, art, FORMAT)

    def build() -> LogisticHeads:
        return LogisticHeads(functionals.set_dims(model_sets(art)), len(art["labels"]))

    return rebuild(path, build, art["state_dict"]), art


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
class ExpertKind(Kind):
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
        log.info(f"{cfg.name}: functionals {'+'.join(sets)} of {len(df)} utterances")
        X = functionals.load_matrix(df, sets, cfg.cache_dir, cfg.train.progress)
        X = X.astype(np.float64)
        speakers = df["speaker"].astype(str).to_numpy()
        index = {lab: i for i, lab in enumerate(labels)}
        y = np.asarray([index[v] for v in df["label"].astype(str)])
        glob = sorted(degenerate.global_speakers(df, cfg.features))
        n = len(X)
        if m.speeds:
            log.info(f"speed-perturbed copies {m.speeds} of every clip join the training rows")
            copies = [
                functionals.load_matrix(df, sets, cfg.cache_dir, cfg.train.progress, a)
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

    def fit(
        self,
        cfg: Any,
        data: dict[str, Any],
        fold: Any,
        out: Path,
        resume: bool = False,
        callbacks: Any = None,
    ) -> FoldOutput:
        """Normalise with the training speakers' statistics, fit the heads
        (`stlser.heads.fit_heads`), save the artefact, score the test rows."""
        from stlser.features import normalize_functionals

        pos = data["pos"]
        tr, va, te = (
            np.asarray([pos[str(u)] for u in part], np.int64)
            for part in (fold.train, fold.val, fold.test)
        )
        X, n = data["X"], data["n"]
        fit = np.concatenate([tr, va])
        copies = None
        if len(X) > n:
            k = np.arange(1, len(X) // n)[:, None] * n
            copies = ((tr + k).ravel(), (va + k).ravel())
        every = fit if copies is None else np.concatenate([fit, *copies])
        Z, _ = normalize_functionals(X, data["speakers"], data["mode"], every, data["glob"])
        m = cfg.model
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

    def load(self, path: str | Path, art: dict[str, Any]) -> LogisticHeads:
        return from_artefact(path, art)[0]

    def recognizer(self, path: str | Path, art: dict[str, Any]) -> Any:
        model, art = from_artefact(path, art)
        return functionals.recognizer(model, art, model_sets(art), self.name, path)

    def export(self, path: str | Path, art: dict[str, Any], out: str | Path, **kw: Any) -> Path:
        model, art = from_artefact(path, art)
        return functionals.export(model, art, model_sets(art), self.name, out)

    def score(self, path: str | Path, art: dict[str, Any], df: Any, cache_dir: str | None) -> Any:
        from stlser.config import FeatureConfig

        model, art = from_artefact(path, art)
        X = functionals.load_matrix(df, model_sets(art), cache_dir, progress=False)
        fc = FeatureConfig(**art["feature_config"])
        with torch.no_grad():
            if fc.normalize != "speaker":  # the stored global statistics, as in prediction
                return model(torch.as_tensor(X, dtype=torch.float32)).numpy()
            Z = functionals.speakers_normalised(X.astype(np.float64), df, fc)
            lp = model.log_probs(torch.as_tensor(Z, dtype=torch.float32))
        return torch.softmax(lp, -1).numpy()

    def describe(self, art: dict[str, Any]) -> dict[str, Any]:
        return {**super().describe(art), "functionals": model_sets(art)}
