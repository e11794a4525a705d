"""The named functional sets a functionals model (`expert`, `svm`) can read, and where each comes
from.

* stlser's own sets, computed in torch by :class:`stlser.features.functionals.FunctionalFrontEnd`
  (permissive, batched, exportable into the model's ONNX graph): ``compact`` (96, eGeMAPS-sized),
  ``medium`` (1,752, IS10-sized), ``large`` (4,282, ComParE-sized).
* openSMILE's sets (``egemaps``, ``compare``, ``is10``, ``is09``, ``emobase``): need the optional
  extra ``pip install 'stlser[opensmile]'`` — openSMILE is under the audEERING Research License,
  which forbids use in or for commercial products.

This module imports neither torch nor openSMILE: the config checks use it.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import Any

import numpy as np

from stlser.smile import FUNCTIONAL_SETS as OPENSMILE_SETS

#: stlser's own sets → number of functionals (a test checks these against the front end).
OWN_SETS: dict[str, int] = {"compact": 96, "medium": 1752, "large": 4282}
#: Values per frame of the own descriptors (``features.kind: lld``): 69 and their deltas.
N_LLD = 138
#: Suffix of an own-set name computed relative to each clip's level (``model.level: drop``):
#: ``"compact+large/relative"`` names a front-end pass, ``"large/relative"`` a set of it.
RELATIVE = "/relative"
#: Every set name a config may use: own sets first.
NAMES: tuple[str, ...] = (*OWN_SETS, *OPENSMILE_SETS)
OPENSMILE_EXTRA = (
    "pip install 'stlser[opensmile]' (openSMILE: audEERING Research License, non-commercial "
    "use only; stlser's own sets compact, medium, large need nothing more)"
)


class MissingExtraError(ImportError):
    """An optional extra this operation needs is not installed (the message says which)."""


def is_own(name: str) -> bool:
    return name in OWN_SETS


def dims(sets: list[str]) -> list[int]:
    """Number of functionals of each named set; ValueError for an unknown name."""
    unknown = [s for s in sets if s not in NAMES]
    if unknown or not sets:
        raise ValueError(f"functional sets must be named from {list(NAMES)}, got {sets}")
    return [OWN_SETS[s] if s in OWN_SETS else OPENSMILE_SETS[s][1] for s in sets]


def opensmile_available() -> bool:
    try:
        return importlib.util.find_spec("opensmile") is not None
    except (ImportError, ValueError):  # ValueError: sys.modules["opensmile"] is None
        return False


def require_opensmile(what: str) -> None:
    """MissingExtraError naming the extra when openSMILE is not importable."""
    try:
        import opensmile  # noqa: F401
    except ImportError:
        raise MissingExtraError(f"{what} needs openSMILE: {OPENSMILE_EXTRA}") from None


def relative_level(model: Any) -> bool:
    """Whether a model (its config, or an artefact's ``model_config`` dict) reads its own sets
    relative to each clip's level: ``model.level: drop``."""
    level = model.get("level") if isinstance(model, dict) else getattr(model, "level", None)
    return level == "drop"


def pass_name(sets: Sequence[str], relative: bool) -> str:
    """The name of one front-end pass over `sets` (the feature cache's ``what``):
    ``"compact+large"``, with :data:`RELATIVE` when `relative` and the sets are own ones."""
    return "+".join(sets) + (RELATIVE if relative and all(map(is_own, sets)) else "")


def stats_names(sets: Sequence[str], relative: bool) -> list[str]:
    """The set names a speaker's statistics carry (``"large/relative"`` when `relative`), so a
    model refuses statistics of other sets or of the other level."""
    return [s + RELATIVE if relative else s for s in sets]


def own_groups(sets: list[str]) -> list[list[str]]:
    """`sets` cut into runs of consecutive own sets (computed in one pass of the front end) and
    single openSMILE sets, in order: ``[compact, egemaps, large]`` → ``[[compact], [egemaps],
    [large]]``; ``[compact, large]`` → ``[[compact, large]]``."""
    out: list[list[str]] = []
    for s in sets:
        if out and is_own(s) and is_own(out[-1][-1]):
            out[-1].append(s)
        else:
            out.append([s])
    return out


#: Functionals that a gain moves: a level shift moves the location of a log-power descriptor
#: (a gain ``a`` adds ``2 ln a`` to log energy and to every log-mel band; the MFCCs, whose DCT
#: rows past 0 sum to zero, do not move) and scales RMS and loudness and all but their
#: scale-free functionals.
LOCATION_FUNCS = {"mean", "p1", "p20", "p50", "p80", "p99", "min", "max", "lin_offset", "quad_c"}
SCALE_FREE_FUNCS = {
    "skewness", "kurtosis", "relpos_min", "relpos_max", "rise_time", "fall_time",
    "uplevel25", "uplevel50", "uplevel75", "uplevel90", "peak_rate", "peak_distance",
}  # fmt: skip
LOG_POWER_LLDS = {"log_energy", *(f"mel{i:02d}" for i in range(1, 27))}
SCALED_LLDS = {"rms", "loudness", "d_rms", "d_loudness"}


def level_columns(names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Masks over functional names (``"set:descriptor[_V|_UV]_functional"``) of the values a
    recording gain moves: ``shifted`` (location functionals of the log-power descriptors: they
    move by the level's change) and ``scaled`` (RMS and loudness and their deltas, except the
    scale-free functionals). Every other value of the own sets does not depend on the gain, but
    for the front end's fixed floors in near-silent frames, which the pass relative to the clip's
    level removes (``"compact+large/relative"``; ``model.level: drop`` reads that pass and
    ignores these columns)."""
    shifted = np.zeros(len(names), bool)
    scaled = np.zeros(len(names), bool)
    llds = sorted(LOG_POWER_LLDS | SCALED_LLDS, key=len, reverse=True)
    for j, name in enumerate(names):
        rest = name.split(":", 1)[-1]
        for d in llds:
            tag = next((t for t in ("_V_", "_UV_", "_") if rest.startswith(d + t)), None)
            if tag is None:
                continue
            func = rest[len(d) + len(tag) :]
            if d in SCALED_LLDS:
                scaled[j] = func not in SCALE_FREE_FUNCS
            else:
                shifted[j] = func in LOCATION_FUNCS
            break
    return shifted, scaled
