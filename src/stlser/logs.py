"""What a run shows: stlser's own lines and progress; third-party tips and warnings only when
asked (``stlser --verbose`` or ``STLSER_VERBOSE=1``, which worker processes inherit)."""

from __future__ import annotations

import logging
import os
import sys
import warnings

#: loggers of libraries whose INFO lines are chatter in a run ("GPU available", tips, ...)
THIRD_PARTY = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "torch")


def verbose() -> bool:
    return os.environ.get("STLSER_VERBOSE", "") not in ("", "0")


def quiet_loggers() -> None:
    """Unless verbose: third-party loggers at ERROR (Lightning sets its own to INFO when it is
    imported, so the module that imports it calls this again)."""
    if verbose():
        return
    for name in THIRD_PARTY:
        logging.getLogger(name).setLevel(logging.ERROR)


def quiet_third_party() -> None:
    """For a process stlser runs (the CLI, its workers): unless verbose, third-party loggers
    at ERROR and warnings shown only when stlser itself raises them."""
    if verbose():
        return
    quiet_loggers()
    warnings.filterwarnings("ignore")
    warnings.filterwarnings("default", module=r"stlser(\.|$)")


def setup(show_verbose: bool = False) -> None:
    """The command line's logging: stlser's INFO lines on stderr as ``[stlser] ...``."""
    if show_verbose:
        os.environ["STLSER_VERBOSE"] = "1"
    lg = logging.getLogger("stlser")
    if not any(getattr(h, "_stlser_cli", False) for h in lg.handlers):
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("[stlser] %(message)s"))
        h._stlser_cli = True  # type: ignore[attr-defined]
        lg.addHandler(h)
    lg.setLevel(logging.DEBUG if show_verbose else logging.INFO)
    if os.environ.get("RANK", "0") != "0":  # a data-parallel rank other than 0 (torchrun)
        lg.setLevel(logging.WARNING)
    lg.propagate = False
    quiet_third_party()
