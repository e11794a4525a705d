"""Speakers on whom speaker normalisation would remove the emotion itself.

Speaker normalisation z-scores each speaker with the statistics of that speaker's own
utterances. When a speaker speaks (nearly) one emotion only, those statistics *are* that
emotion: subtracting them erases what the classifier should find (on a natural-speech corpus
with 26 of 29 speakers single-label both the network and the SVM fell below chance). With very
few utterances the statistics are unstable as well.

:func:`find` flags such speakers from the manifest: the share of their most frequent label is
at least `max_share` (when the corpus has several labels), or they have fewer than `min_utts`
utterances. With ``features.speaker_fallback = "global"`` (the default) they are normalised with
the training set's global statistics instead (`stlser.features.normalize_all`,
`stlser.features.normalize_functionals`); ``"off"`` keeps plain speaker normalisation. The
decision is logged loudly and recorded in the run's report.

Caveat: the label distribution of a *test* speaker is used to decide how that speaker is
normalised. That uses test labels for a preprocessing choice (not for the prediction itself);
a deployed model has no labels, and unknown speakers get the global statistics anyway.
"""

from __future__ import annotations

from typing import Any

from stlser.results import SpeakerNormalisation

FALLBACKS = ("global", "off")


def find(df: Any, max_share: float = 0.9, min_utts: int = 5) -> dict[str, str]:
    """Degenerate speakers of a manifest → {speaker: reason} (speakers '' are ignored)."""
    if "speaker" not in df.columns or len(df) == 0:
        return {}
    spk = df["speaker"].astype(str)
    n_labels = df["label"].nunique()
    out: dict[str, str] = {}
    for s, labels in df["label"].astype(str).groupby(spk):
        if not s:
            continue
        counts = labels.value_counts()
        share = float(counts.iloc[0]) / len(labels)
        if len(labels) < min_utts:
            out[str(s)] = f"{len(labels)} utterance(s) (< {min_utts})"
        elif n_labels > 1 and share >= max_share:
            out[str(s)] = f"{100 * share:.0f} % {counts.index[0]}"
    return out


def from_config(df: Any, fc: Any) -> dict[str, str]:
    """Degenerate speakers under a FeatureConfig's thresholds ({} unless mode is speaker)."""
    if getattr(fc, "normalize", "speaker") != "speaker":
        return {}
    return find(df, fc.degenerate_share, fc.degenerate_min_utts)


def global_speakers(df: Any, fc: Any) -> set[str]:
    """Speakers to normalise with global statistics (empty when the fallback is off)."""
    fallback = getattr(fc, "speaker_fallback", "global")
    if fallback not in FALLBACKS:
        raise ValueError(f"features.speaker_fallback must be one of {FALLBACKS}, not {fallback!r}")
    return set(from_config(df, fc)) if fallback == "global" else set()


def warning(found: dict[str, str], n_speakers: int, fallback: str | None = "global") -> str:
    """The loud warning text ('' when nothing was found)."""
    if not found:
        return ""
    eg = ", ".join(f"{s} ({r})" for s, r in list(sorted(found.items()))[:6])
    more = f", +{len(found) - 6} more" if len(found) > 6 else ""
    then = {
        "global": "they are normalised with global statistics instead (features.speaker_fallback=global)",
        "off": "features.speaker_fallback=off keeps speaker normalisation for them: expect poor results",
        None: "speaker normalisation would remove their emotion (features.speaker_fallback decides)",
    }[fallback]
    return (
        f"WARNING: {len(found)} of {n_speakers} speakers speak (nearly) one emotion or have too few "
        f"utterances for speaker normalisation: {eg}{more}; {then}"
    )


def report(df: Any, fc: Any, log: Any) -> SpeakerNormalisation:
    """Warn through `log` (loudly) and return :func:`record` — what runs call."""
    info = record(df, fc)
    warn = warning(info.degenerate_speakers, df["speaker"].nunique(), fc.speaker_fallback)
    if warn:
        log(warn)
    return info


def record(df: Any, fc: Any) -> SpeakerNormalisation:
    """What the report stores about the decision (`RunReport.speaker_normalisation`)."""
    found = from_config(df, fc)
    return SpeakerNormalisation(
        degenerate_speakers=found,
        speaker_fallback=getattr(fc, "speaker_fallback", "global") if found else None,
        max_share=fc.degenerate_share,
        min_utts=fc.degenerate_min_utts,
    )
