"""Benchmark storing recordings in S3 through the project's store path, against raw boto3.

Run (needs the RF_S3_* settings of a running S3 server, e.g. ``make services-up``)::

    set -a; . .services/env; set +a; .venv/bin/python bench/bench_storage.py

1. Seven 1 MiB recordings stored concurrently with ``tasks.storage.save_recording`` (what
   the ``store`` task runs: ``.npy`` then ``.sigmf-meta`` through the S3Bucket block's
   client, with a CRC32 the server verifies): wall time and MB/s, first (cold) and median.
   The seed project claimed ~300 ms for this.
2. The same seven recordings stored with raw boto3 ``put_object`` (a client of its own,
   seven threads, the same two objects per recording, botocore's default checksum),
   timed alternately with (1) so both see the same server load. Figure of merit:
   throughput through the block / raw throughput; target >= 0.8.

Everything is written under a fresh ``bench-<id>/`` folder of the bucket and deleted at
the end. The script exits 0 whatever the figures (1 only when RF_S3_* are missing).
``--json PATH`` writes the rows ``bench/run.py`` collects (bench/rows.py); ``--rounds``
shrinks the run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import boto3
import numpy as np
from botocore.config import Config
from rows import row, skipped, write_rows

from blocks.storage import S3_ENV, minio_bucket_from_env
from tasks.objectstore import object_store
from tasks.recording import Recording, build_recording
from tasks.storage import recording_key, save_recording

RECEIVERS = 7
SAMPLES = 131_072  # complex64: a 1 MiB .npy
ROUNDS = 15
TARGET_RATIO = 0.8
CLAIMED_MS = 300.0


def recordings(started: datetime) -> dict[str, Recording]:
    rng = np.random.default_rng(0)
    out = {}
    for i in range(RECEIVERS):
        samples = (rng.standard_normal(SAMPLES) + 1j * rng.standard_normal(SAMPLES)) * 0.1
        name = f"rx{i}"
        out[name] = build_recording(
            samples.astype(np.complex64),
            name=name,
            sample_rate=12001.135,
            frequency_hz=145.5e6,
            start_utc=started,
            acquisition_id="bench",
            receiver=name,
            latitude=45.0,
            longitude=7.6,
            altitude_m=250.0,
            hw="KiwiSDR",
            duration_s=SAMPLES / 12001.135,
            measurements={"power_dbfs": -20.0},
            quality={"gps_fix": True, "lost_frames": 0, "adc_overflow_frames": 0},
        )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=ROUNDS, help="timed rounds (%(default)s)")
    p.add_argument("--json", default=None, metavar="PATH", help="write the result rows here")
    args = p.parse_args(argv)
    rounds = args.rounds
    missing = [k for k in S3_ENV if not os.environ.get(k)]
    if missing:
        if args.json:
            write_rows(args.json, [skipped("storage", "skipped: no services")])
        print(
            f"bench_storage: {', '.join(missing)} not set. Start an S3 server and load its "
            "settings first: `make services-up; set -a; . .services/env; set +a`",
            file=sys.stderr,
        )
        return 1
    bucket = minio_bucket_from_env(dict(os.environ))
    bucket.bucket_folder = f"bench-{uuid.uuid4().hex[:10]}"
    started = datetime.now(UTC)
    recs = recordings(started)
    total_mb = sum(len(r.npy) + len(r.meta_bytes) for r in recs.values()) / 1e6

    raw = boto3.session.Session(
        aws_access_key_id=os.environ["RF_S3_ACCESS_KEY"],
        aws_secret_access_key=os.environ["RF_S3_SECRET_KEY"],
        region_name=os.environ.get("RF_S3_REGION") or "us-east-1",
    ).client(
        "s3",
        endpoint_url=os.environ["RF_S3_ENDPOINT"],
        config=Config(s3={"addressing_style": "path"}, max_pool_connections=RECEIVERS + 3),
    )
    pool = ThreadPoolExecutor(RECEIVERS)

    def keys(run: str) -> dict[str, str]:
        return {name: recording_key(f"{run}", started, name) for name in recs}

    async def through_block(run: str) -> float:
        t0 = time.perf_counter()
        await asyncio.gather(
            *(save_recording(bucket, key, recs[name]) for name, key in keys(run).items())
        )
        return time.perf_counter() - t0

    def raw_put(key: str, rec: Recording) -> None:
        folder = bucket.bucket_folder
        raw.put_object(Bucket=bucket.bucket_name, Key=f"{folder}/{key}.npy", Body=rec.npy)
        raw.put_object(
            Bucket=bucket.bucket_name, Key=f"{folder}/{key}.sigmf-meta", Body=rec.meta_bytes
        )

    def through_raw(run: str) -> float:
        t0 = time.perf_counter()
        list(pool.map(lambda kv: raw_put(kv[1], recs[kv[0]]), keys(run).items()))
        return time.perf_counter() - t0

    print(
        f"storing {RECEIVERS} recordings of {SAMPLES * 8 / 2**20:g} MiB (+ SigMF metadata, "
        f"{total_mb:.2f} MB in all) concurrently to {os.environ['RF_S3_ENDPOINT']}"
    )
    try:
        with asyncio.Runner() as loop:
            cold = loop.run(through_block("cold"))  # includes building the block's client
            through_raw("cold-raw")
            block_times, raw_times = [], []
            for i in range(rounds):  # alternate, so both see the same server state
                block_times.append(loop.run(through_block(f"b{i}")))
                raw_times.append(through_raw(f"r{i}"))
            store = object_store(bucket)
            loop.run(store.delete([o.key for o in loop.run(store.list(""))]))
    finally:
        pool.shutdown()
    t_block, t_raw = statistics.median(block_times), statistics.median(raw_times)
    ratio = t_raw / t_block  # throughput ratio: (MB / t_block) / (MB / t_raw)
    print(
        f"  store path (save_recording x{RECEIVERS}, asyncio.gather): first {cold * 1e3:.0f} ms, "
        f"median {t_block * 1e3:.0f} ms of {rounds} = {total_mb / t_block:.0f} MB/s "
        f"(seed claimed ~{CLAIMED_MS:.0f} ms: {CLAIMED_MS / 1e3 / t_block:.1f}x that speed)"
    )
    print(
        f"  raw boto3 put_object ({RECEIVERS} threads):           "
        f"median {t_raw * 1e3:.0f} ms of {rounds} = {total_mb / t_raw:.0f} MB/s"
    )
    print(
        f"  target: block/raw throughput >= {TARGET_RATIO}: {ratio:.2f} "
        f"{'PASS' if ratio >= TARGET_RATIO else 'FAIL'}  "
        f"(block min/max {min(block_times) * 1e3:.0f}/{max(block_times) * 1e3:.0f} ms, "
        f"raw {min(raw_times) * 1e3:.0f}/{max(raw_times) * 1e3:.0f} ms)"
    )
    if args.json:
        case = f"{RECEIVERS} x {SAMPLES * 8 / 2**20:g} MiB"
        write_rows(
            args.json,
            [
                row(
                    "storage",
                    case,
                    "store path",
                    total_mb / t_block,
                    "MB/s",
                    "raw boto3 put_object",
                    total_mb / t_raw,
                    target=f">= {TARGET_RATIO}",
                    ok=ratio >= TARGET_RATIO,
                ),
                row(
                    "storage",
                    case,
                    "store path, first (cold)",
                    total_mb / cold,
                    "MB/s",
                    "raw boto3 put_object",
                    total_mb / t_raw,
                ),
            ],
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
