"""Run fingerprints: `crossval --resume` only continues a run made with the same settings.

A run's fingerprint (``fingerprint.json`` in the run folder) records everything that determines
a fold's result: the resolved config minus the fields that do not (:data:`IGNORED`: parallelism,
threads, progress, logging, output/cache locations, the manifest's location — its content is
hashed instead), a hash of the manifest's content (utterance ids, labels, speakers, sessions,
durations) and a hash of the folds. Resuming with anything else would reuse finished folds of
another experiment and pair predictions with the wrong utterances, so it is refused with the
keys that differ; ``--force`` resumes anyway and records that it did.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from stlser.utils import write_json

FILE = "fingerprint.json"
FORMAT = "stlser-fingerprint/1"
#: Config keys that do not change a fold's result.
IGNORED = {
    "name",
    "cache_dir",
    "data.root",
    "data.manifest",
    "train.jobs",
    "train.num_threads",
    "train.progress",
    "train.log_every_n_steps",
}
#: Manifest columns whose content determines results (paths may move with the corpus).
MANIFEST_COLUMNS = ("utt_id", "label", "speaker", "session", "duration")


class ResumeMismatch(ValueError):
    """The run folder holds a run made with other settings."""


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def manifest_hash(df: Any) -> str:
    cols = [c for c in MANIFEST_COLUMNS if c in df.columns]
    rows = df[cols].astype(str).sort_values("utt_id", kind="stable").values.tolist()
    return _sha([cols, rows])


def folds_hash(folds: list) -> str:
    return _sha([asdict(f) for f in folds])


def init_hash(spec: str) -> str:
    """sha256 of the file `model.init` names (``"base"``: the shipped model)."""
    from stlser.recognizer import resolve_init_path

    return hashlib.sha256(resolve_init_path(spec).read_bytes()).hexdigest()


def compute(cfg: Any, df: Any, folds: list) -> dict[str, Any]:
    """The fingerprint of a run: relevant config keys (flat), manifest and folds hashes."""
    flat = _flatten(asdict(cfg))
    config = {k: v for k, v in sorted(flat.items()) if k not in IGNORED}
    if config.get("model.init"):  # the pretrained file's content, not just its name
        config["model.init"] = f"{config['model.init']} sha256:{init_hash(config['model.init'])}"
    return {
        "format": FORMAT,
        "config": config,
        "manifest": manifest_hash(df),
        "splits": folds_hash(folds),
    }


def _defaults() -> dict[str, Any]:
    from stlser.config import ExperimentConfig

    return _flatten(asdict(ExperimentConfig()))


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human-readable list of what differs between two fingerprints. A key an older stlser did
    not have counts as its default (a run made before a lever existed ran without it)."""
    out = []
    oc, nc = old.get("config", {}), new.get("config", {})
    oc = {**{k: v for k, v in _defaults().items() if k in nc and k not in oc}, **oc}
    for k in sorted(set(oc) | set(nc)):
        if oc.get(k, "<absent>") != nc.get(k, "<absent>"):
            out.append(f"{k}: {oc.get(k, '<absent>')!r} → {nc.get(k, '<absent>')!r}")
    if old.get("manifest") != new.get("manifest"):
        out.append("manifest content (utterances, labels, speakers, sessions or durations)")
    if old.get("splits") != new.get("splits"):
        out.append("splits (the folds' train/validation/test utterances)")
    return out


def has_work(run: Path) -> bool:
    """True if the run folder holds fold results or checkpoints a resume would reuse."""
    return any(run.glob("fold_*/fold.json")) or any(run.glob("fold_*/**/checkpoints/*.ckpt"))


def guard(run: Path, fp: dict[str, Any], resume: bool, force: bool, log) -> dict[str, Any]:
    """Check a run folder before anything is written into it; returns the fingerprint to store.

    Without `resume` the run starts afresh (finished folds are not reused), so any stored
    fingerprint is simply replaced. With `resume`, a stored fingerprint must match `fp`; a
    mismatch raises ResumeMismatch naming the differing keys unless `force`, which logs them and
    records them in the stored fingerprint (``forced_over``). A run with results but no
    fingerprint (made before fingerprints existed) is resumed with a warning.
    """
    path = run / FILE
    if not resume:
        return fp
    if not path.exists():
        if has_work(run):
            log(
                f"WARNING: {run} has no {FILE} (made by an older stlser): cannot check that "
                "--resume uses the same settings; resuming as asked"
            )
        return fp
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ResumeMismatch(
            f"{path}: unreadable fingerprint ({e}); use --force or a new output"
        ) from None
    diff = differences(old, fp)
    if not diff:
        return {**fp, **({"forced_over": old["forced_over"]} if "forced_over" in old else {})}
    listing = "; ".join(diff[:12]) + (f"; +{len(diff) - 12} more" if len(diff) > 12 else "")
    if not force:
        raise ResumeMismatch(
            f"cannot resume {run}: it was run with other settings ({listing}). Finished folds "
            "would be reused as if this config had produced them. Use another --output, drop "
            "--resume to start over, or pass --force to resume anyway."
        )
    log(f"WARNING: --force: resuming {run} although settings differ: {listing}")
    return {**fp, "forced_over": list(old.get("forced_over", [])) + diff}


def store(run: Path, fp: dict[str, Any]) -> None:
    write_json(run / FILE, fp)
