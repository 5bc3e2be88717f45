"""nnU-Net's preprocessed data: is every training case there, whole and readable?

`verify_preprocessed` (verify.py) is the entry: the cheap check (cheap.py, frame.py: plain Python, about a
millisecond a case) and, when asked, the deep read (deep.py, a blosc2 subprocess started by `verify_deep`).
Only deep.py imports numpy or blosc2, and nothing imports deep.py: it runs as `python -m`.
"""

from __future__ import annotations

from supervisor.preprocessed.cheap import CaseProblem, FolderCheck, check_folder, data_identifier
from supervisor.preprocessed.verify import (
           DeepCheckError,
           DeepResult,
           PreprocessedReport,
           verify_deep,
           verify_preprocessed,
)

__all__ = ["CaseProblem", "DeepCheckError", "DeepResult", "FolderCheck", "PreprocessedReport", "check_folder",
           "data_identifier", "verify_deep", "verify_preprocessed"]
