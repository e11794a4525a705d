"""A general model from several corpora (`stlser pretrain`) and its leave-one-corpus-out check.

The corpora of ``data.pool`` (each under ``data.root/<name>`` in its release layout) are read
into one manifest (utterance and speaker ids prefixed with the corpus), labels mapped to one
vocabulary (:data:`VOCAB`); each utterance's softmax covers the whole vocabulary, so a clip of
a corpus without `disgust` still teaches that it is not disgust (limited to its corpus's labels,
a label taught by one corpus had no say against it elsewhere, and out-of-domain clips collapsed
onto it: docs/decisions.md D17). The recognizer is the expert recipe (`stlser.kinds.expert`,
``model.kind: expert``); L2 is chosen on one validation speaker per corpus, then the model is
refit on every speaker. :func:`leave_one_corpus_out` scores the recipe on each corpus after
training on the others, beside an eGeMAPS + linear SVM trained on the same corpora, and fits the
model's answer settings (`stlser.calibration`) on those held-out predictions.

Why this is one module: the general model, its leave-one-corpus-out check and the answer
settings fitted on that check's predictions are one procedure over one pooled manifest; the
check refits the same recipe, and the settings exist only because of the check.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from stlser import calibration, featuresets, heads
from stlser.config import ExperimentConfig
from stlser.kinds import expert, functionals
from stlser.metrics import ua
from stlser.utils import md_cell, write_json, write_text

log = logging.getLogger(__name__)
#: The shared label vocabulary, in output order.
VOCAB = ("angry", "happy", "neutral", "sad", "fear", "surprise", "disgust", "boredom")


def pool_manifest(root: str | Path, corpora: list[str]) -> pd.DataFrame:
    """One manifest over several corpora: ids and speakers prefixed ``<corpus>/``, labels
    outside :data:`VOCAB` dropped. An entry is a reader name read from ``root/<name>``, or
    ``reader=folder`` (read ``root/folder`` with that reader; the corpus is called `folder`)."""
    from stlser.corpora import build_manifest

    frames = []
    for entry in corpora:
        reader, _, folder = entry.partition("=")
        name = folder or reader
        df, _ = build_manifest(reader, Path(root) / name)
        df = df[df["label"].isin(VOCAB)].copy()
        df["corpus"] = name
        df["utt_id"] = name + "/" + df["utt_id"].astype(str)
        df["speaker"] = name + "/" + df["speaker"].astype(str)
        frames.append(df)
    if not frames:
        raise ValueError("data.pool names no corpus")
    return pd.concat(frames, ignore_index=True)


def label_mask(df: pd.DataFrame, labels: list[str]) -> np.ndarray:
    have = df.groupby("corpus")["label"].agg(set).to_dict()
    return np.asarray([[lab in have[c] for lab in labels] for c in df["corpus"]], dtype=bool)


def _normalise(X: np.ndarray, df: pd.DataFrame, cfg: ExperimentConfig) -> np.ndarray:
    from stlser import degenerate
    from stlser.features import normalize_functionals

    glob = sorted(degenerate.global_speakers(df, cfg.features))
    mode = cfg.features.normalize if cfg.features.normalize != "utterance" else "none"
    Z, _ = normalize_functionals(X, df["speaker"].astype(str).to_numpy(), mode, None, glob)
    return Z


def _val_rows(df: pd.DataFrame, seed: int) -> np.ndarray:
    """One validation speaker per corpus (drawn with `seed`), as row indices."""
    rng = np.random.default_rng(seed)
    rows = []
    for _, sub in df.groupby("corpus", sort=True):
        spk = sorted(sub["speaker"].unique())
        if len(spk) > 1:
            pick = spk[int(rng.integers(len(spk)))]
            rows.append(np.flatnonzero((df["speaker"] == pick).to_numpy()))
    return np.concatenate(rows) if rows else np.zeros(0, np.int64)


def _masked_ua(lp: torch.Tensor, y: np.ndarray, mask: np.ndarray, corpus: np.ndarray) -> float:
    """Mean over corpora of UA, each corpus's prediction limited to its own labels."""
    pred = lp.masked_fill(~torch.as_tensor(mask), -1e9).argmax(1).numpy()
    return float(np.mean([ua(y[corpus == c], pred[corpus == c]) for c in np.unique(corpus)]))


def with_copies(
    df: pd.DataFrame, X: np.ndarray, copies: list[np.ndarray], speeds: list[float]
) -> tuple[pd.DataFrame, np.ndarray]:
    """The pool's rows followed by their speed-perturbed copies (`copies[k]`: functionals of
    every row at `speeds[k]`), each (speaker, factor) a speaker of its own (``spk@0.9``), as
    crossval treats them (`stlser.kinds.expert`)."""
    if not copies:
        return df, X
    if len(copies) != len(speeds) or any(c.shape != X.shape for c in copies):
        raise ValueError(f"with_copies: {len(copies)} copies of {X.shape} for speeds {speeds}")
    extra = [df.assign(speaker=df["speaker"].astype(str) + f"@{a}") for a in speeds]
    return pd.concat([df, *extra], ignore_index=True), np.concatenate([X, *copies])


def fit_pool(
    X: np.ndarray,
    df: pd.DataFrame,
    cfg: ExperimentConfig,
    copies: list[np.ndarray] | None = None,
) -> tuple[heads.LogisticHeads, list[str], dict[str, Any]]:
    """Fit the expert recipe on a pooled manifest (rows aligned with `X`); `copies`: the
    functionals of the rows' speed-perturbed copies, one array per factor of model.speeds,
    joining the fits (the validation speakers' copies left out when L2 is chosen)."""
    n = len(df)
    df_all, X_all = with_copies(df, X, copies or [], list(cfg.model.speeds))
    labels = [v for v in VOCAB if v in set(df["label"])]
    y = np.asarray([labels.index(v) for v in df_all["label"]])
    mask = label_mask(df_all, labels)
    corpus = df_all["corpus"].astype(str).to_numpy()
    Z = _normalise(X_all, df_all, cfg)
    drop = expert.dropped_columns(cfg.model)
    if drop is not None:
        Z[:, drop] = 0.0  # constant inputs: their weights stay 0
    dims = functionals.set_dims(list(cfg.model.functionals))
    select = cfg.model.l2_mode == "select"
    va = _val_rows(df, cfg.seed) if select else np.zeros(0, np.int64)  # average: none needed
    held = (va[None] + n * np.arange(len(X_all) // n)[:, None]).ravel()  # va and its copies
    tr = np.setdiff1d(np.arange(len(X_all)), held)

    def score(lp: torch.Tensor, val: np.ndarray) -> float:
        return _masked_ua(lp, y[val], mask[val], corpus[val])

    model, sel = heads.fit_heads(
        Z,
        y,
        dims,
        len(labels),
        tr,
        va,
        list(cfg.model.l2_grid),
        mode=cfg.model.l2_mode,
        score=score,
        refit=np.arange(len(X_all)),
    )
    raw = torch.as_tensor(X, dtype=torch.float32)
    model.mean.copy_(raw.mean(0))
    model.std.copy_(raw.std(0).clamp_min(1e-5))
    per_corpus = {c: sorted(set(df_all["label"][corpus == c])) for c in sorted(set(corpus))}
    info = {
        "l2": sel["l2"],
        "val_speakers": sorted(df["speaker"].iloc[va].unique().tolist()),
        "corpora": sorted(set(corpus)),
        "n": int(len(df)),
        "speed_copies": list(cfg.model.speeds) if copies else [],
        "speakers": int(df["speaker"].nunique()),
        "labels_per_corpus": per_corpus,
        "default_labels": calibration.default_labels(labels, per_corpus),
    }
    return model.eval(), labels, info


def _features(df: pd.DataFrame, cfg: ExperimentConfig) -> np.ndarray:
    rel = featuresets.relative_level(cfg.model)  # own sets relative to each clip's level
    return functionals.load_matrix(
        df, list(cfg.model.functionals), cfg.cache_dir, cfg.train.progress, relative=rel
    )


def _copies(df: pd.DataFrame, cfg: ExperimentConfig) -> list[np.ndarray]:
    """Functionals of every row speed-perturbed by each factor of model.speeds (cached)."""
    sets, cache = list(cfg.model.functionals), cfg.cache_dir
    rel = featuresets.relative_level(cfg.model)
    return [
        functionals.load_matrix(df, sets, cache, cfg.train.progress, a, rel)
        for a in cfg.model.speeds
    ]


def check(cfg: ExperimentConfig) -> None:
    """The general model is the expert recipe over a pool of corpora: refuse anything else
    before work starts."""
    if cfg.model.kind != "expert":
        raise ValueError(f"stlser pretrain fits model.kind=expert, not {cfg.model.kind!r}")
    if cfg.model.init:
        raise ValueError("stlser pretrain starts from zero: model.init must be null")
    if not cfg.data.pool:
        raise ValueError("stlser pretrain needs data.pool (the corpora under data.root)")


def recipe_digest(cfg: ExperimentConfig) -> str:
    """What decides the general model: the pooled corpora, seed, model and feature settings."""
    import hashlib
    import json

    model = dataclasses.asdict(cfg.model)
    if not model["speeds"]:  # a key added later, at its off value: the models made before match
        del model["speeds"]
    what = {
        "softmax": "vocabulary",  # every row's softmax over all labels (not its corpus's)
        "pool": sorted(cfg.data.pool),
        "seed": cfg.seed,
        "model": model,
        "features": dataclasses.asdict(cfg.features),
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


def pretrain(
    cfg: ExperimentConfig,
    out: str | Path,
    pooled: tuple[pd.DataFrame, np.ndarray, list[np.ndarray]] | None = None,
) -> Path:
    """Train the general model on every corpus of ``data.pool``; writes `model.pt`,
    `model.onnx` and `pretrain.json` into `out`. Returns the artefact's path.

    Idempotent: a finished model in `out` made by the same recipe (:func:`recipe_digest`,
    stored in pretrain.json) is reused, not refit. `pooled` is the pool's manifest, its
    functionals and those of its speed-perturbed copies (one array per factor of model.speeds;
    rows aligned) when the caller already has them (:func:`leave_one_corpus_out`)."""
    import json

    from stlser.export import export_onnx

    check(cfg)
    t0 = time.time()
    out = Path(out)
    digest = recipe_digest(cfg)
    done = out / "pretrain.json"
    if (out / "model.pt").exists() and done.exists():
        if json.loads(done.read_text()).get("recipe_sha256") == digest:
            log.info(f"general model: {out / 'model.pt'} was made by this recipe; reused")
            return out / "model.pt"
    out.mkdir(parents=True, exist_ok=True)
    if pooled is None:
        df = pool_manifest(cfg.data.root, list(cfg.data.pool))
        pooled = (df, _features(df, cfg), _copies(df, cfg))
    df, X, copies = pooled
    model, labels, info = fit_pool(X, df, cfg, copies)
    meta = {"corpus": "+".join(info["corpora"]), "seed": cfg.seed, **info}
    path = expert.save(out / "model.pt", model, cfg, labels, meta)
    export_onnx(path, out / "model.onnx")
    seconds = round(time.time() - t0, 1)
    write_json(done, {**meta, "labels": labels, "seconds": seconds, "recipe_sha256": digest})
    log.info(
        f"general model: {len(labels)} labels, {info['n']} utterances, {info['speakers']} speakers → {path}"
    )
    return path


# ------------------------------------------------------------------ leave-one-corpus-out
def _scores(y: np.ndarray, pred: np.ndarray, labels: list[str]) -> dict[str, Any]:
    from stlser import metrics

    ys, ps = [labels[i] for i in y], [labels[i] for i in pred]
    m = metrics.compute(ys, ps, labels)
    conf = np.zeros((len(labels), len(labels)), np.int64)
    np.add.at(conf, (np.asarray(y, np.int64), np.asarray(pred, np.int64)), 1)
    return {"ua": m["ua"], "wa": m["wa"], "n": int(len(y)), "confusion": conf.tolist()}


def _without(entry: str) -> Path:
    """One leave-one-corpus-out model (a unit of `stlser.engines`): the recipe fitted on every
    corpus of the pool but `entry`, in ``out/without-<corpus>/`` (reused when made already)."""
    from stlser import runs

    w = runs.WORKER
    cfg, df, X, copies = w["cfg"], w["df"], w["X"], w["copies"]
    held = entry.partition("=")[2] or entry
    test = (df["corpus"] == held).to_numpy()
    pool = [c for c in cfg.data.pool if c != entry]
    one = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, pool=pool))
    pooled = (df[~test].reset_index(drop=True), X[~test], [c[~test] for c in copies])
    return pretrain(one, Path(w["out"]) / f"without-{held}", pooled)


def leave_one_corpus_out(
    cfg: ExperimentConfig, out: str | Path, engine: str = "local", address: str | None = None
) -> dict[str, Any]:
    """For each corpus of ``data.pool``: fit on the others, test on it (labels both sides
    share). Scores the recipe with the held-out speakers normalised by their own statistics
    (as in crossval) and by the stored global statistics (what `stlser predict` does with one
    clip), and an eGeMAPS + linear SVM fitted on the same corpora (C on the same validation
    speakers; needs the ``opensmile`` extra, else left out). Writes `loco.json` and `loco.md`
    into `out`.

    The models without each corpus are units of `engine` (`stlser.engines`: here, or Ray tasks
    on the cluster at `address`, else an embedded one); the scoring runs here."""
    from stlser import engines, featuresets
    from stlser.kinds.svm import make_classifier

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pool = list(cfg.data.pool)
    df = pool_manifest(cfg.data.root, pool)
    X = _features(df, cfg)
    copies = _copies(df, cfg)
    Z_all = _normalise(X, df, cfg)
    sets = list(cfg.model.functionals)
    dims = functionals.set_dims(sets)
    # eGeMAPS, speaker-normalised, for the SVM beside the recipe (the openSMILE extra)
    Z_eg = None
    if "egemaps" in sets:
        start = sum(dims[: sets.index("egemaps")])
        Z_eg = Z_all[:, start : start + dims[sets.index("egemaps")]]
    elif featuresets.opensmile_available():
        E = functionals.load_matrix(df, ["egemaps"], cfg.cache_dir, cfg.train.progress)
        Z_eg = _normalise(E.astype(np.float64), df, cfg)
    # the model without each corpus is kept (out/without-<corpus>/): fine-tuning it on the
    # held-out corpus is the leak-free fine-tuning experiment; a rerun reuses it
    paths: dict[str, Path] = {}
    state = {"cfg": cfg, "df": df, "X": X, "copies": copies, "out": str(out)}
    engines.run(
        pool, _without, paths.__setitem__, state, threads=cfg.train.num_threads, engine=engine,
        address=address,
    )  # fmt: skip
    results: dict[str, Any] = {}
    answers: dict[str, dict[str, Any]] = {}
    for entry in pool:
        held = entry.partition("=")[2] or entry
        test = (df["corpus"] == held).to_numpy()
        train_df = df[~test].reset_index(drop=True)
        model, art = expert.from_artefact(paths[entry])
        labels = list(art["labels"])
        shared = [lab for lab in labels if lab in set(df["label"][test])]
        rows = test & df["label"].isin(shared).to_numpy()
        y = np.asarray([shared.index(v) for v in df["label"][rows]])
        keep = [labels.index(lab) for lab in shared]
        with torch.no_grad():
            lp_spk = model.log_probs(torch.as_tensor(Z_all[rows], dtype=torch.float32))[:, keep]
            p_glob = model(torch.as_tensor(X[rows], dtype=torch.float32))[:, keep]
        res = {
            "labels": shared,
            "dropped": int(test.sum() - rows.sum()),
            "train": sorted(set(train_df["corpus"])),
            "speaker_norm": _scores(y, lp_spk.argmax(1).numpy(), shared),
            "global_norm": _scores(y, p_glob.argmax(1).numpy(), shared),
        }
        answers[held] = _answers(model, labels, art["meta"], Z_all[test], X[test], df[test])
        res.update(answers[held]["scores"])
        # per gender (speaker-normalised), where the corpus records it
        gender = df["gender"].astype(str).to_numpy()[rows]
        res["by_gender"] = {
            g: _scores(y[gender == g], lp_spk.argmax(1).numpy()[gender == g], shared)["ua"]
            for g in ("F", "M")
            if (gender == g).sum() >= 20
        }
        if Z_eg is not None:  # eGeMAPS + SVM on the same training corpora and validation speakers
            ytr = train_df["label"].astype(str).to_numpy()
            va = _val_rows(train_df, cfg.seed)
            trn = np.setdiff1d(np.arange(len(train_df)), va)
            Ztr = Z_eg[~test]
            best = (-1.0, 1.0)
            for c in (1e-3, 1e-2, 1e-1, 1.0):
                clf = make_classifier(c, "balanced").fit(Ztr[trn], ytr[trn])
                got = ua(ytr[va], clf.predict(Ztr[va]))
                if got > best[0]:
                    best = (got, c)
            clf = make_classifier(best[1], "balanced").fit(Ztr, ytr)
            cls = [str(c) for c in clf[-1].classes_]
            dec = clf.decision_function(Z_eg[rows])[:, [cls.index(lab) for lab in shared]]
            res["svm"] = _scores(y, dec.argmax(1), shared)
        results[held] = res
        log.info(
            f"LOCO {held}: UA {100 * res['speaker_norm']['ua']:.1f} (speaker norm), "
            f"{100 * res['global_norm']['ua']:.1f} (global); SVM "
            f"{100 * res.get('svm', {}).get('ua', float('nan')):.1f}"
        )
    temps = _calibrate(answers, results)
    write_json(out / "loco.json", results)
    write_text(out / "loco.md", render_loco(results))
    if (out / "model.pt").exists():
        set_answer_settings(out, temps)
    return results


def _answers(
    model: heads.LogisticHeads,
    labels: list[str],
    meta: dict[str, Any],
    Z: np.ndarray,
    X: np.ndarray,
    df: pd.DataFrame,
) -> dict[str, Any]:
    """A held-out corpus as a user meets the model: every clip, answered with the model's default
    labels (a true label outside them is always wrong). Log-probabilities of both
    normalisations (for calibration), UA over every true class, the answers' distribution."""
    from stlser import metrics

    dl = list(meta.get("default_labels") or labels)
    cols = [labels.index(lab) for lab in dl]
    with torch.no_grad():
        lp = {
            "speaker": model.log_probs(torch.as_tensor(Z, dtype=torch.float32)).numpy(),
            "global": torch.log(model(torch.as_tensor(X, dtype=torch.float32))).numpy(),
        }
    lp = {k: calibration.log_softmax(v[:, cols].astype(np.float64)) for k, v in lp.items()}
    truth = df["label"].astype(str).to_numpy()
    y = np.asarray([dl.index(t) if t in dl else -1 for t in truth])
    names = dl + sorted(set(truth) - set(dl))
    scores: dict[str, Any] = {"answers": dl}
    for k, v in lp.items():
        pred = np.asarray(dl)[v.argmax(1)]
        share = {lab: float(np.mean(pred == lab)) for lab in dl}
        m = metrics.compute(list(truth), list(pred), names)
        scores[f"every_label_{k}"] = {"ua": m["ua"], "wa": m["wa"], "answered": share}
    return {"lp": lp, "y": y, "scores": scores}


def _calibrate(answers: dict[str, dict[str, Any]], results: dict[str, Any]) -> dict[str, float]:
    """Temperatures of both normalisations fitted on every held-out corpus's answers (returned:
    the model's settings); in `results`, each corpus's reliability before and after a
    temperature fitted on the *other* held-out corpora (ECE; share of wrong answers above 0.9)."""
    temps = {}
    for k in ("global", "speaker"):
        temps[k] = calibration.fit_temperature((a["lp"][k], a["y"]) for a in answers.values())
        for held, a in answers.items():
            others = [(b["lp"][k], b["y"]) for h, b in answers.items() if h != held]
            t = calibration.fit_temperature(others) if others else 1.0
            rel = {"temperature": t}
            for when, tt in (("before", 1.0), ("after", t)):
                p = np.exp(calibration.log_softmax(a["lp"][k] / tt))
                right = p.argmax(1) == a["y"]
                rel[f"ece_{when}"] = calibration.ece(p, right)
                rel[f"wrong_over_0.9_{when}"] = float(((p.max(1) > 0.9) & ~right).sum()) / max(
                    1, int((~right).sum())
                )
                rel[f"unsure_{when}"] = float(np.mean(p.max(1) < calibration.UNSURE_BELOW))
            results[held][f"reliability_{k}"] = rel
    log.info(f"answer temperatures (leave-one-corpus-out): {temps}")
    return temps


def set_answer_settings(
    out: Path, temps: dict[str, float], default_labels: list[str] | None = None
) -> None:
    """Write the temperatures (and `default_labels`, when given) into the model in `out`
    (`model.pt`'s metadata and, when present, `model.onnx`'s), atomically; the weights are
    untouched."""
    from stlser.safety import safe_torch_load
    from stlser.utils import atomic_path

    art = safe_torch_load(out / "model.pt", "model artefact")
    art["meta"] = {**art.get("meta", {}), "temperature": dict(temps)}
    if default_labels is not None:
        art["meta"]["default_labels"] = list(default_labels)
    calibration.settings(art["meta"])  # refuse a temperature out of range
    with atomic_path(out / "model.pt") as tmp:
        torch.save(art, tmp)
    if (out / "model.onnx").exists():
        from stlser.onnx_graph import set_metadata

        values = {"temperature": temps, "default_labels": art["meta"].get("default_labels")}
        set_metadata(out / "model.onnx", {k: json.dumps(v) for k, v in values.items() if v})


def render_loco(results: dict[str, Any]) -> str:
    lines = [
        "| held-out corpus | trained on | labels scored | n | UA, speaker norm | UA, global norm "
        "(one clip) | WA, speaker norm | eGeMAPS + SVM UA | UA − SVM | UA F / M |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for held, r in results.items():
        s, g, svm = r["speaker_norm"], r["global_norm"], r.get("svm")
        gap = f"{100 * (s['ua'] - svm['ua']):+.1f}" if svm else "–"
        sex = " / ".join(
            f"{100 * r['by_gender'][k]:.1f}" for k in ("F", "M") if k in r["by_gender"]
        )
        lines.append(
            f"| {md_cell(held)} | {md_cell(' + '.join(r['train']))} | "
            f"{md_cell(', '.join(r['labels']))} | {s['n']} | "
            f"{100 * s['ua']:.1f} | {100 * g['ua']:.1f} | {100 * s['wa']:.1f} | "
            f"{100 * svm['ua'] if svm else float('nan'):.1f} | {gap} | {sex or '–'} |"
        )
    lines += _render_answers(results)
    for held, r in results.items():  # confusion (speaker norm): rows true, columns predicted
        conf = r["speaker_norm"].get("confusion")
        if conf is None:
            continue
        labs = [md_cell(x) for x in r["labels"]]
        lines += [
            "",
            f"Confusion, {md_cell(held)} (speaker norm; rows: true, columns: predicted)",
            "",
        ]
        lines.append("| true \\ pred | " + " | ".join(labs) + " |")
        lines.append("|---|" + "---:|" * len(labs))
        lines += [
            f"| {a} | " + " | ".join(map(str, row)) + " |"
            for a, row in zip(labs, conf, strict=True)
        ]
    return "\n".join(lines) + "\n"


def _render_answers(results: dict[str, Any]) -> list[str]:
    """The held-out corpora as a user meets the model: default labels, every clip."""
    rows = [(h, r) for h, r in results.items() if "answers" in r]
    if not rows:
        return []
    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    lines = [
        "",
        "Every clip, answered with the model's default labels (a true label outside them counts "
        "as wrong); reliability with a temperature fitted on the *other* held-out corpora",
        "",
        "| held-out corpus | answers with | UA, one clip | UA, speaker stats | top answer, one "
        "clip | ECE one clip, T=1 → fitted | wrong answers > 0.9, T=1 → fitted | unsure (< "
        f"{calibration.UNSURE_BELOW}), fitted | ECE speaker stats, T=1 → fitted |",
        "|---|---|---:|---:|---|---|---|---:|---|",
    ]
    for held, r in rows:
        g, s = r["every_label_global"], r["every_label_speaker"]
        top = max(g["answered"], key=g["answered"].get)
        rg, rs = r["reliability_global"], r["reliability_speaker"]
        lines.append(
            f"| {md_cell(held)} | {md_cell(', '.join(r['answers']))} | {pct(g['ua'])} | "
            f"{pct(s['ua'])} | {md_cell(top)} {pct(g['answered'][top])} % | "
            f"{pct(rg['ece_before'])} → {pct(rg['ece_after'])} (T {rg['temperature']:.2f}) | "
            f"{pct(rg['wrong_over_0.9_before'])} % → {pct(rg['wrong_over_0.9_after'])} % | "
            f"{pct(rg['unsure_after'])} % | {pct(rs['ece_before'])} → {pct(rs['ece_after'])} "
            f"(T {rs['temperature']:.2f}) |"
        )
    labs = list(dict.fromkeys(lab for _, r in rows for lab in r["answers"]))
    lines += [
        "",
        "Answers given, one clip with global statistics (share of the corpus's clips, %)",
        "",
        "| held-out corpus | " + " | ".join(md_cell(x) for x in labs) + " |",
        "|---|" + "---:|" * len(labs),
    ]
    for held, r in rows:
        share = r["every_label_global"]["answered"]
        cells = [pct(share[x]) if x in share else "–" for x in labs]
        lines.append(f"| {md_cell(held)} | " + " | ".join(cells) + " |")
    return lines
