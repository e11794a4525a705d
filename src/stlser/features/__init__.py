"""Acoustic features: the front end (`frontend`: log-mel / MFCC / own-descriptor frames in
torch, eGeMAPS), the torch descriptor / functional front end (`descriptors`, `voice`,
`functionals`: openSMILE-style functionals without openSMILE; shared pieces in `dsp`), the disk
cache with bulk extraction (`cache`) and normalisation
(`normalise`). The names most callers need are re-exported here."""

from stlser.features import cache, descriptors, dsp, frontend, functionals, normalise, voice
from stlser.features.cache import (
    FEATURE_VERSION,
    FeatureCache,
    fill_cache,
    format_stats,
    functional_target,
    load_features,
    load_functionals,
    recipe_targets,
)
from stlser.features.descriptors import Descriptors
from stlser.features.frontend import (
    LOG_FLOOR,
    N_EGEMAPS_FUNCTIONALS,
    N_EGEMAPS_LLD,
    LogMel,
    compute,
    dct_matrix,
    dft_kernels,
    egemaps_functionals,
    feature_key_config,
    front_end,
    hann_window,
    mel_filterbank,
    n_frames,
)
from stlser.features.functionals import SETS as FUNCTIONAL_FRONTEND_SETS
from stlser.features.functionals import FunctionalFrontEnd, masked_functionals
from stlser.features.normalise import (
    NORM_MODES,
    STD_FLOOR,
    Normalize,
    Normalizer,
    frame_stats,
    normalize_all,
    normalize_functionals,
)

__all__ = [
    "FEATURE_VERSION",
    "FUNCTIONAL_FRONTEND_SETS",
    "Descriptors",
    "FunctionalFrontEnd",
    "LOG_FLOOR",
    "N_EGEMAPS_FUNCTIONALS",
    "N_EGEMAPS_LLD",
    "NORM_MODES",
    "STD_FLOOR",
    "FeatureCache",
    "LogMel",
    "Normalize",
    "Normalizer",
    "cache",
    "compute",
    "dct_matrix",
    "descriptors",
    "dft_kernels",
    "dsp",
    "egemaps_functionals",
    "feature_key_config",
    "fill_cache",
    "format_stats",
    "functional_target",
    "frame_stats",
    "front_end",
    "frontend",
    "functionals",
    "hann_window",
    "load_features",
    "load_functionals",
    "recipe_targets",
    "masked_functionals",
    "mel_filterbank",
    "n_frames",
    "normalise",
    "normalize_all",
    "normalize_functionals",
    "voice",
]
