"""Lightning checkpoint I/O for stlser runs: atomic writes beside the target, safe reads.

Lightning's own `TorchCheckpointIO` writes through an fsspec transaction whose temporary file
lives in the system temp folder, so a SIGKILL mid-write leaves a partial file there that nothing
ever removes. Here the checkpoint is written to ``.<name>.<random>.tmp`` beside the target and
renamed over it (`stlser.utils.atomic_path`); a temp file left by a killed run is removed by
`stlser.utils.clean_stale_temps` at the start of the next run. Reads use
``torch.load(weights_only=True)`` (`stlser.safety.safe_torch_load`): resuming from a crafted
``last.ckpt`` cannot run code.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from stlser.safety import safe_torch_load
from stlser.utils import atomic_path


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None
    ) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)

    def load_checkpoint(
        self, path: Any, map_location: Any = None, weights_only: Any = None
    ) -> dict[str, Any]:
        return safe_torch_load(path, "Lightning checkpoint")


def load_checkpoint(path: Any) -> dict[str, Any]:
    """A Lightning checkpoint's dict, read without running code (ModelLoadError otherwise)."""
    return safe_torch_load(path, "Lightning checkpoint")
