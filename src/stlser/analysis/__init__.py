"""The paper's analyses, each computed from finished run directories.

* :func:`embeddings` — t-SNE of the utterance embedding before (Z0) and after (Z_L) the stacked
  transformer layers, with separation measures computed in the original embedding space.
* :func:`curves` — per-epoch training/validation loss and accuracy of every fold (Fig. 4b).
* :func:`sweep` — cross-validation for each value of one config key (e.g. the depth sweep, Fig. 4a).
* :func:`reproduce` — the ablation (0 vs 5 STL layers) under the paper's random split and under
  the corpus's speaker-independent protocol, with a report generated from the run reports only.

Every number these functions write is read from a run's ``report.json``, ``fold_XX/fold.json``,
``fold_XX/logs/metrics.csv`` or ``fold_XX/embeddings.npz``; nothing is typed in by hand except
the paper's own published figures (:data:`PAPER`), which are shown beside ours and labelled.
"""

from stlser.analysis.ablation import paired_gain, reproduce, reproduce_configs, sign_test
from stlser.analysis.ablation_facts import PAPER
from stlser.analysis.common import fold_stats
from stlser.analysis.embedding_maps import embeddings, knn_accuracy, tsne_perplexity
from stlser.analysis.learning_curves import curves
from stlser.analysis.rendering import render_reproduce
from stlser.analysis.sweeps import split_values, sweep
from stlser.config import with_value

__all__ = [
    "PAPER",
    "curves",
    "embeddings",
    "fold_stats",
    "knn_accuracy",
    "paired_gain",
    "render_reproduce",
    "reproduce",
    "reproduce_configs",
    "sign_test",
    "split_values",
    "sweep",
    "tsne_perplexity",
    "with_value",
]
