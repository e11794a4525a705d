"""stlser: end-to-end speech emotion recognition with stacked transformer layers.

CNN-BiLSTM + stacked transformer layers over log-mel frames (Wang et al., ICASSP 2021),
with honest speaker-independent evaluation, reproduction of the paper's analyses, and
deployment paths (Python API, CLI, ONNX, web service).
"""

__version__ = "0.1.0"
