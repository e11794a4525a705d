"""`stlser` command line: argument parsing only; every command calls one library function.

Imports are lazy so `stlser --help` and light commands start fast (Lightning costs ~5 s).

Why this is one module: it is the argument parser of every command (each a few lines calling
the library), and `--help` must see all of them at once; `stlser.cli.predict` holds the one
command with logic of its own.
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

FORCE_HELP = (
    "with --resume: continue even if the run was made with other settings (the differing keys "
    "are printed and recorded in fingerprint.json)"
)


def _cfg_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="experiment YAML (configs/*.yaml or a path)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set train.max_epochs=5 (repeatable)",
    )


def _engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="where the work runs: here or in local worker processes (local, the default), or "
        "as Ray tasks (ray; needs pip install 'stlser[cluster]'): the folds, the --loco models "
        "of pretrain, the files of features and predict; results are the same",
    )
    p.add_argument(
        "--address",
        default=None,
        help="with --engine ray: the Ray cluster to join, e.g. 10.0.0.5:6379 (default: "
        "$STLSER_RAY_ADDRESS, else an embedded cluster on this machine, bound to 127.0.0.1)",
    )


def _where(a: argparse.Namespace) -> dict:
    """The engine options of a command, checked before any work (Ray missing → exit 2)."""
    from stlser import engines

    engines.require(a.engine)
    return {"engine": a.engine, "address": a.address}


def _load_cfg(args: argparse.Namespace):
    from stlser import config

    return config.load(args.config, args.overrides)


# ---------------------------------------------------------------------------- data commands
def cmd_manifest(a: argparse.Namespace) -> int:
    import pandas as pd

    from stlser import corpora

    corpora.manifest_output(a.output)  # a wrong kind of output is refused before the scan
    df, skipped = corpora.build_manifest(
        a.corpus,
        a.root,
        labels=a.labels,
        speaker_regex=a.speaker_regex,
        audio=a.audio,
        duplicates=a.duplicates,
    )
    dup = pd.DataFrame(df.attrs.get("duplicates", []), columns=corpora.duplicates.COLUMNS)
    out = corpora.write_manifest(df, skipped, a.output, duplicates=dup)
    print(corpora.summarize(df, skipped))
    print(corpora.duplicates.describe(dup, a.duplicates))
    print(f"manifest: {out}")
    if df.empty:
        print(
            f"stlser manifest: error: no usable utterance ({len(skipped)} file(s) skipped, "
            f"reasons in {out.parent / 'skipped.csv'})",
            file=sys.stderr,
        )
        return 1
    _warn_degenerate(df)
    return 0


def _warn_degenerate(df) -> None:
    """The loud warning about speakers speaker normalisation would fail on (stlser.degenerate)."""
    from stlser import degenerate
    from stlser.config import FeatureConfig

    fc = FeatureConfig()
    found = degenerate.find(df, fc.degenerate_share, fc.degenerate_min_utts)
    if found:
        print(degenerate.warning(found, df["speaker"].nunique(), None), file=sys.stderr)


def cmd_splits(a: argparse.Namespace) -> int:
    from stlser import corpora, splits
    from stlser.config import SplitConfig

    df = corpora.read_manifest(a.manifest)
    split = SplitConfig(
        protocol=a.protocol,
        k=a.k,
        val_speakers=a.val_speakers,
        val_fraction=a.val_fraction,
        test_fraction=a.test_fraction,
        seeds=[int(x) for x in a.seeds.split(",")] if a.seeds else [a.seed],
    )
    folds = splits.from_config(df, split, a.seed)
    splits.save(folds, a.output)
    print(splits.summarize(folds, df))
    print(f"splits: {a.output}")
    _warn_degenerate(df)
    return 0


def cmd_features(a: argparse.Namespace) -> int:
    """Fill the cache with what the config's recipe reads (`features.recipe_targets`)."""
    from stlser import corpora, engines, features

    where = _where(a)
    cfg = _load_cfg(a)
    df = corpora.read_manifest(a.manifest)
    cache_dir = a.cache_dir or cfg.cache_dir
    failed_all = False
    with engines.session(where["engine"], a.address):  # one cluster for every target
        for name, fcfg, what, speed in features.recipe_targets(cfg.model, cfg.features):
            if where["engine"] == "local":
                stats = features.fill_cache(
                    df, fcfg, cache_dir, workers=a.workers, what=what, speed=speed
                )
            else:
                from stlser import raydata

                stats = raydata.fill_cache(
                    df, fcfg, cache_dir, what=what, speed=speed, address=a.address,
                    workers=a.workers,
                )  # fmt: skip
            print(("" if name == "frames" else f"{name}: ") + features.format_stats(stats))
            if stats.get("skipped"):
                print(f"{len(stats['skipped'])} file(s) skipped, reasons in {stats['skipped_csv']}")
                failed_all = failed_all or len(stats["skipped"]) == stats["n"]
    return 1 if failed_all else 0


def cmd_synth(a: argparse.Namespace) -> int:
    from stlser import synth

    path = synth.generate(a.output, speakers=a.speakers, per_class=a.per_class, seed=a.seed)
    print(f"synthetic corpus written; manifest: {path}")
    return 0


# ----------------------------------------------------------------------- experiment commands
def cmd_train(a: argparse.Namespace) -> int:
    from stlser import driver

    where = _where(a)
    out = driver.train(_load_cfg(a), a.output, resume=a.resume, fold=a.fold, force=a.force, **where)
    print(f"run: {out}")
    return 0


def cmd_crossval(a: argparse.Namespace) -> int:
    from stlser import driver

    where = _where(a)
    out = driver.crossval(_load_cfg(a), a.output, resume=a.resume, force=a.force, **where)
    print(f"report: {Path(out) / 'report.md'}")
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    from stlser import driver

    out = driver.evaluate(a.model, a.manifest, a.output, cache_dir=a.cache_dir, stats=a.stats)
    print(f"report: {Path(out) / 'report.md'}")
    return 0


def cmd_baseline(a: argparse.Namespace) -> int:
    from stlser import driver

    where = _where(a)
    out = driver.baseline(_load_cfg(a), a.output, resume=a.resume, force=a.force, **where)
    print(f"report: {Path(out) / 'report.md'}")
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from stlser import driver

    driver.demo(a.output)
    return 0


# ------------------------------------------------------------------------ analysis commands
def cmd_sweep(a: argparse.Namespace) -> int:
    from stlser import analysis

    where = _where(a)
    out = analysis.sweep(_load_cfg(a), a.param, a.values, a.output, **where)
    print(f"sweep: {out}")
    return 0


def cmd_analyze(a: argparse.Namespace) -> int:
    from stlser import analysis

    if a.what == "embeddings":
        out = analysis.embeddings(a.run, a.output)
    else:
        out = analysis.curves(a.run, a.output)
    print(f"figure: {out}")
    return 0


def cmd_reproduce(a: argparse.Namespace) -> int:
    from stlser import analysis

    out = analysis.reproduce(a.corpus, a.root, a.output, seeds=a.seeds, overrides=a.overrides)
    print(f"report: {out}")
    return 0


# ---------------------------------------------------------------------- deployment commands
def cmd_predict(a: argparse.Namespace) -> int:
    from stlser.cli.predict import predict_cli

    where = _where(a)
    labels = [x for x in (a.labels or "").split(",") if x.strip()] or None
    return predict_cli(
        a.model,
        a.inputs,
        output=a.output,
        segments=a.segments,
        labels=labels,
        adapt=a.adapt,
        speaker_stats=a.speaker_stats,
        save_stats=a.save_stats,
        **where,
    )


def cmd_pretrain(a: argparse.Namespace) -> int:
    from stlser import pretrain

    where = _where(a)
    cfg = _load_cfg(a)
    path = pretrain.pretrain(cfg, a.output)  # one model: fitted here, on either engine
    print(f"model: {path}")
    if a.loco:
        pretrain.leave_one_corpus_out(cfg, a.output, **where)
        print((Path(a.output) / "loco.md").read_text())
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    from stlser import export

    out = export.export_onnx(a.model, a.output)
    print(f"onnx: {out}")
    return 0


def cmd_serve(a: argparse.Namespace) -> int:
    from stlser.cli.predict import load_recognizer
    from stlser.service import serve
    from stlser.service.app import check_options

    check_options(  # before the model loads
        max_mb=a.max_mb,
        max_seconds=a.max_seconds,
        max_uploads=a.max_uploads,
        read_timeout=a.read_timeout,
        port=a.port,
    )

    labels = [x for x in (a.labels or "").split(",") if x.strip()] or None
    serve(
        load_recognizer(a.model).restrict(labels),
        host=a.host,
        port=a.port,
        max_mb=a.max_mb,
        max_seconds=a.max_seconds,
        allowed_hosts=a.allow_host,
        allowed_origins=a.allow_origin,
        max_uploads=a.max_uploads,
        read_timeout=a.read_timeout,
        max_uploads_per_client=a.max_uploads_per_client,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stlser", description="Speech emotion recognition with stacked transformer layers."
    )
    p.add_argument(
        "-v", "--verbose", action="store_true", help="also show third-party tips and warnings"
    )
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("manifest", help="scan a corpus in its release layout → manifest CSV")
    s.add_argument("--corpus", required=True)
    s.add_argument("--root", required=True)
    s.add_argument("--labels", default="native", choices=["native", "4class"])
    s.add_argument(
        "--speaker-regex",
        default=None,
        help="folder/csv/emobox readers: regex with a group for the speaker (emobox: of the key)",
    )
    s.add_argument(
        "--audio",
        default=None,
        help="emobox: the folder holding the audio (wav paths of the lists are found under it)",
    )
    s.add_argument(
        "--duplicates",
        default="error",
        choices=["error", "drop"],
        help="byte-identical files under several ids: list and keep (error: refused later when "
        "split between training and test) or keep the first copy (drop)",
    )
    s.add_argument("-o", "--output", required=True)
    s.set_defaults(func=cmd_manifest)

    s = sub.add_parser("splits", help="folds of an evaluation protocol → splits.json")
    s.add_argument("--manifest", required=True)
    s.add_argument(
        "--protocol",
        default="loso",
        choices=["loso", "loso-session", "group-kfold", "paper", "predefined"],
    )
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--k", type=int, default=5)
    s.add_argument("--val-speakers", type=int, default=1)
    s.add_argument(
        "--val-fraction", type=float, default=0.1, help="paper protocol: validation share"
    )
    s.add_argument("--test-fraction", type=float, default=0.2, help="paper protocol: test share")
    s.add_argument(
        "--seeds", default=None, help="paper protocol: comma-separated seeds, one fold each"
    )
    s.add_argument("-o", "--output", required=True)
    s.set_defaults(func=cmd_splits)

    s = sub.add_parser(
        "features",
        help="fill the feature cache with what the config's recipe reads (its functional sets "
        "at each speed, or the network's frames); print throughput",
    )
    s.add_argument("--manifest", required=True)
    s.add_argument("--cache-dir", default=None)
    s.add_argument(
        "--workers",
        type=int,
        default=0,
        help="processes (0 = one per core); with --engine ray, Ray tasks at once (0 = one per "
        "CPU of the cluster)",
    )
    _cfg_args(s)
    _engine_args(s)
    s.set_defaults(func=cmd_features)

    s = sub.add_parser(
        "synth", help="speak the built-in synthetic 4-class corpus (demos/tests only)"
    )
    s.add_argument("-o", "--output", required=True)
    s.add_argument("--speakers", type=int, default=8)
    s.add_argument("--per-class", type=int, default=40)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_synth)

    s = sub.add_parser("train", help="train one fold of the configured protocol")
    _cfg_args(s)
    s.add_argument("-o", "--output", default=None)
    s.add_argument("--fold", type=int, default=0)
    s.add_argument("--resume", action="store_true", help="continue an interrupted run in --output")
    s.add_argument("--force", action="store_true", help=FORCE_HELP)
    _engine_args(s)
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("crossval", help="train and test every fold; write report.json/md")
    _cfg_args(s)
    s.add_argument("-o", "--output", required=True)
    s.add_argument("--resume", action="store_true", help="continue an interrupted run in --output")
    s.add_argument("--force", action="store_true", help=FORCE_HELP)
    _engine_args(s)
    s.set_defaults(func=cmd_crossval)

    s = sub.add_parser("evaluate", help="score a trained model of any kind on a manifest")
    s.add_argument(
        "--model",
        "--checkpoint",
        dest="model",
        default="base",
        help="model.pt of any kind, a run folder, or 'base' (the shipped model, the default)",
    )
    s.add_argument("--cache-dir", default=".cache/stlser")
    s.add_argument("--manifest", required=True)
    s.add_argument(
        "--stats",
        choices=["speaker", "global"],
        default="speaker",
        help="speaker: each speaker normalised by its own statistics (as in crossval); global: "
        "each clip alone by the training set's statistics, as `stlser predict` (functionals "
        "kinds: expert, svm)",
    )
    s.add_argument("-o", "--output", default=None)
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser(
        "baseline",
        help="eGeMAPS functionals + linear SVM (model.kind=svm) on the config's corpus and folds",
    )
    _cfg_args(s)
    s.add_argument("-o", "--output", required=True)
    s.add_argument("--resume", action="store_true", help="continue an interrupted run in --output")
    s.add_argument("--force", action="store_true", help=FORCE_HELP)
    _engine_args(s)
    s.set_defaults(func=cmd_baseline)

    s = sub.add_parser("demo", help="synthesize → crossval → report on the built-in corpus")
    s.add_argument("-o", "--output", default="runs/demo")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("sweep", help="crossval for each value of one config key")
    _cfg_args(s)
    s.add_argument("--param", required=True)
    s.add_argument("--values", required=True)
    s.add_argument("-o", "--output", required=True)
    _engine_args(s)
    s.set_defaults(func=cmd_sweep)

    s = sub.add_parser("analyze", help="figures from a finished run")
    s.add_argument("what", choices=["embeddings", "curves"])
    s.add_argument("--run", required=True)
    s.add_argument("-o", "--output", default=None)
    s.set_defaults(func=cmd_analyze)

    s = sub.add_parser(
        "reproduce", help="the paper's ablation on a corpus, paper protocol and speaker-independent"
    )
    s.add_argument("--corpus", required=True)
    s.add_argument("--root", required=True)
    s.add_argument("-o", "--output", required=True)
    s.add_argument("--seeds", default="0,1,2")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    s.set_defaults(func=cmd_reproduce)

    s = sub.add_parser("predict", help="emotion of audio files or folders")
    s.add_argument(
        "--model",
        default="base",
        help="model.pt, a run or crossval folder, an exported .onnx, or 'base' (the general "
        "model shipped in the package, the default)",
    )
    s.add_argument(
        "--labels",
        default=None,
        help="answer with these labels only, e.g. angry,happy,neutral,sad (probabilities "
        "renormalised); 'all' = every label the model knows (default: the model's default "
        "labels; for the shipped model those at least two of its corpora teach)",
    )
    s.add_argument("inputs", nargs="+")
    s.add_argument(
        "--segments", action="store_true", help="long audio: one prediction per speech segment"
    )
    s.add_argument(
        "-o",
        "--output",
        default=None,
        help="out.csv, out.jsonl or out.parquet (default: table on stdout)",
    )
    s.add_argument(
        "--adapt",
        choices=["none", "folder", "speaker", "recording"],
        default="none",
        help="speaker adaptation (models over functionals, e.g. the shipped one): normalise "
        "each speaker's clips with that speaker's own statistics, from its unlabeled clips. "
        "folder = the clips of one folder are one speaker; speaker = the input is a CSV with "
        "path and speaker columns; recording = with --segments, each recording is one speaker "
        "(default: none, the training set's global statistics)",
    )
    s.add_argument(
        "--speaker-stats",
        default=None,
        metavar="FILE",
        help="use these saved speaker statistics (.json or .npz) for every input",
    )
    s.add_argument(
        "--save-stats",
        default=None,
        metavar="DIR",
        help="with --adapt: write each speaker's statistics to DIR/<speaker>.json",
    )
    _engine_args(s)
    s.set_defaults(func=cmd_predict)

    s = sub.add_parser("pretrain", help="the general model from several corpora (data.pool)")
    _cfg_args(s)
    s.add_argument("-o", "--output", required=True)
    s.add_argument("--loco", action="store_true", help="also score leave-one-corpus-out (loco.md)")
    _engine_args(s)
    s.set_defaults(func=cmd_pretrain)

    s = sub.add_parser("export", help="ONNX graph: 16 kHz waveform → probabilities")
    s.add_argument("--model", required=True)
    s.add_argument("-o", "--output", required=True)
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("serve", help="HTTP service and web page")
    s.add_argument("--model", default="base", help="as for predict (default: the shipped model)")
    s.add_argument("--labels", default=None, help="as for predict")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--max-mb", type=float, default=20.0)
    s.add_argument("--max-seconds", type=float, default=600.0)
    s.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="Host name clients may use besides loopback and --host (repeatable; '*' = any)",
    )
    s.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="URL",
        help="extra Origin allowed to POST, e.g. https://app.example.org (repeatable)",
    )
    s.add_argument("--max-uploads", type=int, default=4, help="uploads in flight (then 503)")
    s.add_argument(
        "--max-uploads-per-client",
        type=int,
        default=2,
        help="uploads in flight from one client address (then 429); raise it behind a proxy, "
        "where every client has the proxy's address",
    )
    s.add_argument("--read-timeout", type=float, default=30.0, help="seconds to send a body")
    s.set_defaults(func=cmd_serve)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import signal

    from stlser import logs
    from stlser.featuresets import MissingExtraError

    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt("terminated")

    # SIGTERM stops a run as Ctrl-C does: workers killed, nothing half-written
    main_thread = threading.current_thread() is threading.main_thread()
    before = signal.signal(signal.SIGTERM, terminate) if main_thread else None
    logs.setup(args.verbose)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError, KeyError, RuntimeError, MissingExtraError) as e:
        print(f"stlser {args.command}: error: {e}", file=sys.stderr)
        return 2
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, before)


if __name__ == "__main__":
    sys.exit(main())
