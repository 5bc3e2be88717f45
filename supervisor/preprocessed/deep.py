"""`python -m supervisor.preprocessed.deep REQUEST.json`: open every case as nnU-Net's dataset does and decompress it.

A subprocess of `check --deep` (blosc2 and numpy stay out of the supervisor's own process). Prints one line,
RESULT_PREFIX + a JSON list of {case, file, problem}.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from supervisor.trainer.protocol import RESULT_PREFIX


def check_case(folder: Path, case: str) -> list[dict[str, str]]:
    import blosc2
    import numpy as np

    out: list[dict[str, str]] = []
    shapes: dict[str, tuple[int, ...]] = {}
    for name in (f"{case}.b2nd", f"{case}_seg.b2nd"):
        try:
            arr = blosc2.open(urlpath=str(folder / name), mode="r")
            values: Any = arr[...]
        except Exception as exc:
            out.append({"case": case, "file": name, "problem": f"does not decompress ({type(exc).__name__}: "
                                                               f"{str(exc)[:200]})"})
            continue
        shapes[name] = tuple(values.shape)
        if np.issubdtype(values.dtype, np.floating) and not bool(np.isfinite(values).all()):
            out.append({"case": case, "file": name, "problem": "holds NaN or Inf"})
    image, seg = shapes.get(f"{case}.b2nd"), shapes.get(f"{case}_seg.b2nd")
    if image is not None and seg is not None and image[1:] != seg[1:]:
        out.append({"case": case, "file": f"{case}_seg.b2nd",
                    "problem": f"its shape {list(seg)} does not match the image's {list(image)}"})
    return out


def main(request_file: str) -> None:
    req = json.loads(Path(request_file).read_text())
    folder = Path(req["folder"])
    problems = [p for case in req["cases"] for p in check_case(folder, case)]
    print(RESULT_PREFIX + json.dumps(problems), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
