"""The GPU (CuPy) post-processing path against the CPU path: equal labels, and each one's time.

For a machine with a GPU and CuPy (``pip install nucflow[gpu]``). The bundled model (on the GPU
when PyTorch sees one) segments the first ``--per-set`` tiles of every validation set; each
probability map is then labelled by :func:`nucflow.postprocess.label_nuclei` on the CPU and on
``--device``, interleaved, twice each (the faster of the two is kept), and the labels compared.
Last, one large map (the first glioma map tiled 8 x 8) is labelled the same way. Prints one
JSON line per map and a summary; ``--device cpu`` runs the comparison with no GPU (the two
paths are then the same code: a check of the script, not of CuPy).

Usage, from the repository root::

    python benchmarks/device_postprocess.py --data ../shared/data --per-set 12
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402


def _compare(prob: np.ndarray, mpp: float, profile: Any, device: str) -> dict[str, Any]:
    from nucflow.postprocess import label_nuclei

    times: dict[str, list[float]] = {"cpu": [], "other": []}
    labels: dict[str, list[np.ndarray]] = {"cpu": [], "other": []}
    for key, where in (("cpu", "cpu"), ("other", device)) * 2:
        t0 = time.perf_counter()
        labels[key].append(label_nuclei(prob, mpp=mpp, config=profile, device=where))
        times[key].append(time.perf_counter() - t0)
    reference = labels["cpu"][0]
    equal = all(np.array_equal(reference, other) for other in labels["cpu"][1:] + labels["other"])
    return {"px": int(prob.size), "nuclei": int(reference.max()), "equal": bool(equal),
            "cpu_s": round(min(times["cpu"]), 4), "device": device, "device_s": round(min(times["other"]), 4)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--per-set", type=int, default=12, help="tiles per validation set")
    parser.add_argument("--device", default="gpu", choices=("gpu", "cpu"))
    parser.add_argument("--no-large", action="store_true", help="skip the tiled 8 x 8 map")
    args = parser.parse_args(argv)

    import torch
    from skimage import io

    from nucflow.evaluation import load_validation_sets
    from nucflow.pipeline.config import load_segment_config
    from nucflow.pipeline.image import (
        build_predictor,
        method_profile,
        method_spec,
        segment_image,
        with_stain_profile,
    )

    config = replace(load_segment_config(), method="unet")
    spec = method_spec(config)
    config = with_stain_profile(config, spec)
    profile = method_profile(config, spec)
    predictor = build_predictor(spec, config, device="cuda" if torch.cuda.is_available() else "cpu")
    rows, large = [], None
    for vset in load_validation_sets(None, data=args.data):
        for path in sorted(vset.images.glob("*.png"))[: args.per_set]:
            seg = segment_image(io.imread(path)[..., :3], mpp=vset.mpp, spec=spec, config=config,
                                predictor=predictor)
            rows.append({"set": vset.name, "image": path.name}
                        | _compare(seg.probability, spec.mpp, profile, args.device))
            print(json.dumps(rows[-1]), flush=True)
            if large is None and vset.name == "glioma":
                large = np.tile(seg.probability, (8, 8))
    if large is not None and not args.no_large:
        print(json.dumps({"set": "glioma map tiled 8 x 8"} | _compare(large, spec.mpp, profile, args.device)))
    cpu = sum(r["cpu_s"] for r in rows)
    other = sum(r["device_s"] for r in rows)
    print(f"== {sum(r['equal'] for r in rows)}/{len(rows)} maps with equal labels; "
          f"cpu {cpu:.2f} s, {args.device} {other:.2f} s", flush=True)
    return 0 if all(r["equal"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
