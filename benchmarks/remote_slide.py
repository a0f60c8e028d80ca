"""A slide in an S3 bucket: copy it whole to the node's cache, or read byte ranges lazily?

Starts moto's S3 server on loopback, uploads a slide, then reads what segmenting reads (the
thumbnail, then every level-0 tile of ``tile`` px) two ways, each in a fresh cache:

* ``copy``: :func:`nucflow.storage.local_copy` then the local readers (what nucflow does);
* ``lazy``: tifffile over an fsspec file (``readahead`` cache of ``block`` bytes), the
  lazy TIFF backend reading byte ranges on demand (the alternative; TIFF family only).

Reports wall time, GET requests and bytes fetched. Loopback has no latency, so the request
count is what a real store multiplies by its first-byte latency (tens of ms on S3).

Usage::

    python benchmarks/remote_slide.py SLIDE.tif [--tile 512] [--block 5242880]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any


def _counting(fs: Any) -> dict[str, int]:
    """Count the GetObject requests of ``fs`` (s3fs) and the bytes they return."""
    counts = {"requests": 0, "bytes": 0}
    original = fs._call_s3

    async def counted(method: str, *args: Any, **kwargs: Any) -> Any:
        response = await original(method, *args, **kwargs)
        if method == "get_object":
            counts["requests"] += 1
            counts["bytes"] += int(response.get("ContentLength") or 0)
        return response

    fs._call_s3 = counted
    return counts


def _read_all(slide: Any, tile: int) -> int:
    slide.thumbnail(max_size=1024)
    rows, cols = slide.size
    n = 0
    for r in range(0, rows, tile):
        for c in range(0, cols, tile):
            slide.read(mpp=slide.mpp, row=r, col=c, rows=tile, cols=tile)
            n += 1
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("slide", type=Path)
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--block", type=int, default=5 * 2**20)
    args = parser.parse_args()
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=f"http://{host}:{port}")
    import s3fs

    from nucflow.slide._tiff import open_tiff
    from nucflow.slide.reader import Slide, _Opened
    from nucflow.storage import local_copy

    setup = s3fs.S3FileSystem(skip_instance_cache=True)
    setup.mkdir("bench")
    setup.put_file(str(args.slide), f"bench/{args.slide.name}")
    uri = f"s3://bench/{args.slide.name}"
    results = []
    try:
        for how in ("copy", "lazy"):
            # copy: the (cached) instance fsspec.url_to_fs hands nucflow; lazy: a fresh one, counted afresh
            fs = s3fs.S3FileSystem() if how == "copy" else s3fs.S3FileSystem(skip_instance_cache=True)
            counts = _counting(fs)
            with tempfile.TemporaryDirectory() as cache:
                os.environ["NUCFLOW_CACHE"] = cache
                started = time.perf_counter()
                if how == "copy":
                    from nucflow.slide import open_slide

                    slide = open_slide(local_copy(uri))
                else:
                    handle = fs.open(f"bench/{args.slide.name}", "rb", block_size=args.block, cache_type="readahead")
                    backend, mpp = open_tiff(handle)
                    slide = Slide(Path(args.slide.name), _Opened(backend, mpp, "tifffile"), mpp=mpp or 0.5)
                tiles = _read_all(slide, args.tile)
                slide.close()
                results.append({"how": how, "seconds": round(time.perf_counter() - started, 2), "tiles": tiles,
                                **counts, "slide_bytes": args.slide.stat().st_size})
                print(json.dumps(results[-1]), flush=True)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
