"""Model folders on an object-store lake: germline's upload and per-node fetch against pyarrow
copying the same files directly, in the same run.

Starts an S3 server (moto) on 127.0.0.1 in its own process, writes a model-like folder (a few
weight files of random bytes, a config, a tokenizer file), then times, alternating, median of
`--repeats`:
- upload: `LakeFolders.put` (what `save` does after the writer has written the folder:
  markers last, then the folder record) vs `pyarrow.fs.copy_files` local -> S3;
- cold fetch (an empty cache: what a node that never saw the model pays): `LakeFolders.fetch`
  vs `pyarrow.fs.copy_files` S3 -> local;
- warm fetch (the model already cached): `LakeFolders.fetch`, which reads the stored folder's
  record and compares it with the cached one.
Prints each time and the ratio baseline / germline (1.0: as fast as the bare copy).

    .venv/bin/python bench/lake_folders.py --files 4 --mb 64 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_s3() -> tuple[subprocess.Popen, dict[str, str]]:
    """moto in its own process, so the server and the clients do not share one interpreter."""
    import boto3

    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="b",
                          aws_secret_access_key="b", region_name="us-east-1")  # fmt: skip
    deadline = time.monotonic() + 30
    while True:
        try:
            client.create_bucket(Bucket="bench")
            break
        except Exception:
            if time.monotonic() > deadline:
                server.kill()
                raise
            time.sleep(0.3)
    options = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "b",
               "AWS_SECRET_ACCESS_KEY": "b", "AWS_REGION": "us-east-1"}  # fmt: skip
    return server, options


def make_model(folder: Path, files: int, mb: int) -> int:
    folder.mkdir(parents=True)
    for i in range(files):
        (folder / f"model-{i:05d}-of-{files:05d}.safetensors").write_bytes(os.urandom(mb << 20))
    (folder / "tokenizer.json").write_text('{"version": "1.0"}' * 1000)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    return sum(p.stat().st_size for p in folder.iterdir())


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=4, help="weight files in the model")
    parser.add_argument("--mb", type=int, default=64, help="MiB per weight file")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import pyarrow.fs as pafs

    from germline.storage import Lake, LakeFolders
    from germline.storage.folders import filesystem

    server, options = start_s3()
    work = Path(tempfile.mkdtemp(prefix="bench-folders-"))
    try:
        model = work / "model"
        size = make_model(model, args.files, args.mb)
        lake = Lake.resolve("s3://bench/lake", options)
        fs, root = filesystem(lake.root, options)
        local = pafs.LocalFileSystem()
        kinds = ("put", "put_raw", "cold", "cold_raw", "warm")
        times: dict[str, list[float]] = {k: [] for k in kinds}
        for r in range(args.repeats):
            cache = work / f"cache-{r}"
            folders = LakeFolders(lake, cache / "writer")
            uri = lake.model(f"m{r}")

            times["put"].append(timed(lambda folders=folders, uri=uri: folders.put(model, uri)))
            raw = f"{root}/raw/m{r}"
            times["put_raw"].append(timed(lambda raw=raw: pafs.copy_files(
                str(model), raw, source_filesystem=local, destination_filesystem=fs,
                use_threads=True)))  # fmt: skip
            reader = LakeFolders(lake, cache / "reader")
            times["cold"].append(timed(lambda reader=reader, uri=uri: reader.fetch(uri)))
            target = work / f"raw-copy-{r}"
            target.mkdir()
            times["cold_raw"].append(timed(lambda raw=raw, target=target: pafs.copy_files(
                raw, str(target), source_filesystem=fs, destination_filesystem=local,
                use_threads=True)))  # fmt: skip
            times["warm"].append(timed(lambda reader=reader, uri=uri: reader.fetch(uri)))
        med = {k: statistics.median(v) for k, v in times.items()}
        mib = size / (1 << 20)
        print(f"model: {args.files} x {args.mb} MiB weight files + config + tokenizer "
              f"({mib:.0f} MiB); median of {args.repeats}")  # fmt: skip
        print(f"upload      germline {med['put']:.2f} s ({mib / med['put']:.0f} MiB/s)   "
              f"pyarrow copy_files {med['put_raw']:.2f} s   "
              f"ratio {med['put_raw'] / med['put']:.2f}")  # fmt: skip
        print(f"cold fetch  germline {med['cold']:.2f} s ({mib / med['cold']:.0f} MiB/s)   "
              f"pyarrow copy_files {med['cold_raw']:.2f} s   "
              f"ratio {med['cold_raw'] / med['cold']:.2f}")  # fmt: skip
        print(f"warm fetch  germline {med['warm'] * 1000:.1f} ms (the record read and compared)")
    finally:
        server.kill()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
