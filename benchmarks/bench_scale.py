"""Large tables: load time, time per epoch, audit time and peak RSS of `audit train` at 100k, 1M and 10M rows.

Each size runs `audit train --data <generated>.parquet --target y --sensitive g --epochs 1` in its own process (so
peak RSS is that size's), with the default audits. The table is generated as Parquet under a temporary directory
(never kept): 20 numeric columns (1% missing), 10 categorical ones of 2 to 16 values (the sensitive `g` among them)
and a binary target that depends on both. Prints each size's figures and the ratios between sizes: time per epoch
and audit time should grow at most linearly (10M / 1M <= 11x) and peak RSS stay within 3x the float32 feature
matrix.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

NUMERIC = 20
CARDINALITIES = (2, 3, 4, 5, 6, 8, 10, 12, 16)  # and the sensitive g of 4 groups: 10 categorical columns
GROUPS = 4
CHUNK = 1_000_000  # rows generated and written per row group, so the generator's own memory stays small


def one_hot_width() -> int:
    """Model inputs the generated table gives: numeric columns plus every categorical value."""
    return NUMERIC + sum(CARDINALITIES) + GROUPS


def _chunk(rows: int, seed: int) -> dict[str, np.ndarray]:
    """One block of rows; the target is a logistic function of numeric and categorical columns and the group."""
    rng = np.random.default_rng(seed)
    columns: dict[str, np.ndarray] = {}
    logit = np.zeros(rows)
    for j in range(NUMERIC):
        values = rng.normal(j % 5, 1 + j % 3, rows)
        logit += (0.4 if j % 2 else -0.3) * (values - j % 5) / (1 + j % 3) * (j < 8)
        values[rng.random(rows) < 0.01] = np.nan
        columns[f"x{j}"] = values
    for j, cardinality in enumerate(CARDINALITIES):
        codes = rng.integers(0, cardinality, rows)
        logit += 0.3 * np.cos(codes + j)
        columns[f"c{j}"] = np.array([f"v{k}" for k in range(cardinality)], dtype=object)[codes]
    group = rng.integers(0, GROUPS, rows)
    logit += 0.25 * (group - 1.5)
    columns["g"] = np.array([f"g{k}" for k in range(GROUPS)], dtype=object)[group]
    columns["y"] = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    return columns


def generate(path: Path, rows: int, seed: int = 0) -> None:
    """Write the table as Parquet, ``CHUNK`` rows per row group."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer = None
    for start in range(0, rows, CHUNK):
        block = pa.table(_chunk(min(CHUNK, rows - start), seed + start // CHUNK))
        writer = writer or pq.ParquetWriter(path, block.schema)
        writer.write_table(block)
    writer.close()


def child(data: str, out: str, extra: list[str]) -> None:
    """Run `audit train` in this process and print its timings and peak RSS as JSON (the parent's only input)."""
    from audit import cli, runner

    marks: dict[str, float] = {}

    def timed(name, function):
        def wrapper(*args, **kwargs):
            marks[f"{name}_start"] = time.perf_counter()
            result = function(*args, **kwargs)
            marks[f"{name}_end"] = time.perf_counter()
            return result

        return wrapper

    # Timing only: the real functions run, wrapped to record when loading and the audits begin.
    runner.load_dataset = timed("load", runner.load_dataset)
    runner.build_context = timed("audit", runner.build_context)
    started = time.perf_counter()
    args = ["train", "--data", data, "--target", "y", "--sensitive", "g", "--epochs", "1", "--out", out]
    code = cli.main([*args, "--quiet", *extra])
    ended = time.perf_counter()
    report = json.loads((Path(out) / "report.json").read_text())
    performance = next(s for s in report["sections"] if s["name"] == "performance")
    history = performance["data"].get("history") or [{}]
    print(
        json.dumps(
            {
                "exit": code,
                "load_s": marks["load_end"] - marks["load_start"],
                "epoch_s": history[0].get("epoch_time_s"),
                "audit_s": ended - marks["audit_start"],
                "total_s": ended - started,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )


def run_size(rows: int, workdir: Path, extra: list[str]) -> dict[str, float]:
    """Generate the table, train and audit it in a fresh process, and return its figures."""
    data = workdir / f"scale_{rows}.parquet"
    started = time.perf_counter()
    generate(data, rows)
    generated = time.perf_counter() - started
    out = workdir / f"out_{rows}"
    command = [sys.executable, __file__, "--child", str(data), "--out", str(out), *extra]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{rows} rows failed:\n{done.stderr[-4000:]}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    data.unlink()
    matrix_mb = rows * one_hot_width() * 4 / 2**20
    return {"rows": rows, "generate_s": generated, "matrix_mb": matrix_mb, **figures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="100000,1000000,10000000", help="comma-separated row counts")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args, extra = parser.parse_known_args()
    if args.child:
        child(args.child, args.out, extra)
        return
    from _common import device_line

    print(device_line())
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_scale_") as tmp:
        for rows in (int(s) for s in args.sizes.split(",")):
            result = run_size(rows, Path(tmp), extra)
            results.append(result)
            rss_ratio = result["peak_rss_mb"] / result["matrix_mb"]
            print(
                f"{rows:>11,} rows: load {result['load_s']:7.1f} s  epoch {result['epoch_s']:7.1f} s  "
                f"audit {result['audit_s']:7.1f} s  peak RSS {result['peak_rss_mb']:8.0f} MiB "
                f"({rss_ratio:.2f}x the {result['matrix_mb']:.0f} MiB float32 features)  "
                f"[generated in {result['generate_s']:.0f} s]",
                flush=True,
            )
    for small, large in zip(results, results[1:]):
        size = large["rows"] / small["rows"]
        ratios = "  ".join(
            f"{key} {large[key] / small[key]:.1f}x" for key in ("load_s", "epoch_s", "audit_s", "peak_rss_mb")
        )
        print(f"{large['rows']:,} / {small['rows']:,} rows ({size:.0f}x): {ratios}")


if __name__ == "__main__":
    main()
