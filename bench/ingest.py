"""Ingest benchmark: wall time, throughput and extra memory of ``brandtune.ingest.ingest``, serial vs process pool.

    .venv/bin/python bench/ingest.py                                  # N = 100 and 1000, 1024 px JPEGs -> 64 px
    .venv/bin/python bench/ingest.py --sizes 100 1000 --px 1024 --resolution 64

Photos are procedural product scenes (:mod:`brandtune.synthetic`) saved as JPEG quality 90. They are generated
once into ``--photos-dir`` (default: a cache folder under the system temp dir, reused by later runs); the set of N
photos is a folder of hard links to the first N, so the smaller set is a prefix of the larger. Each set is ingested
serially (``workers=1``, in-process) and with the process pool (``workers=0``: one spawned worker per core) into a
fresh ``BRANDTUNE_HOME``. A background thread samples the RSS of this process and of its child processes every
``--sample-ms``; memory is reported as MiB above what was in use just before the ``ingest()`` call (the workers did
not exist then, so their figure is their whole RSS). Timings on a shared machine are noisy: read the ratios.

Exits non-zero only when something fails; nothing here asserts a timing.
"""

# Only the standard library at module level: the spawned pool workers re-import this file as ``__mp_main__``,
# and every module imported here would sit in each worker's memory and be counted against ingest.
from __future__ import annotations

import argparse
import gc
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
# Photos are kept at least this many perceptual-hash bits apart: ingest's near-duplicate limit is 4 by default,
# and the hash ingest computes on its own decode can differ from ours by a bit or two.
DISTINCT_BITS = 8


# ---------------------------------------------------------------------------------------------------- photos


def _render_one(index: int, scene: Any, px: int, path: Path) -> int:
    """Render one scene and save it as JPEG quality 90 (runs in a generator worker)."""
    import io

    from brandtune.fsutil import atomic_write_bytes
    from brandtune.synthetic import render_scene

    buf = io.BytesIO()
    render_scene(scene, px).save(buf, format="JPEG", quality=90)
    atomic_write_bytes(path, buf.getvalue())
    return index


def generate_photos(root: Path, n: int, px: int, seed: int) -> list[Path]:
    """``n`` distinct ``px``-square product photos under ``root/photos``; files already there are reused."""
    import concurrent.futures as cf
    import multiprocessing

    import numpy as np

    from brandtune.synthetic import random_scene

    folder = root / "photos"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    scenes = [random_scene(rng) for _ in range(n)]  # drawn in order: photo i is the same whatever n is
    paths = [folder / f"photo_{i:05d}.jpg" for i in range(n)]
    todo = [i for i, p in enumerate(paths) if not p.is_file()]
    if todo:
        print(f"generating {len(todo)} photos at {px}px into {folder} ...", flush=True)
        start = time.perf_counter()
        ctx = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(max_workers=os.cpu_count() or 1, mp_context=ctx) as pool:
            args = (todo, [scenes[i] for i in todo], [px] * len(todo), [paths[i] for i in todo])
            for _ in pool.map(_render_one, *args, chunksize=8):
                pass
        print(f"generated in {time.perf_counter() - start:.1f} s", flush=True)
    else:
        print(f"reusing {n} photos in {folder}", flush=True)
    replaced = ensure_distinct(paths, px, seed)
    if replaced:
        print(f"re-drew {replaced} photo(s) that were near duplicates of earlier ones", flush=True)
    return paths


def _phash_file(path: Path) -> int:
    import imagehash
    from PIL import Image

    with Image.open(path) as img:
        img.draft("RGB", (256, 256))
        return int(str(imagehash.phash(img.convert("RGB"))), 16)


def ensure_distinct(paths: list[Path], px: int, seed: int) -> int:
    """Re-draw any photo whose perceptual hash is within ``DISTINCT_BITS`` of an earlier photo's.

    Photo i is checked only against photos 0..i-1 and its replacement depends only on (seed, i, attempt), so a
    prefix of the set is the same whatever the set's size. Returns how many photos were re-drawn.
    """
    import numpy as np

    from brandtune.synthetic import random_scene

    hashes = np.zeros(len(paths), dtype=np.uint64)
    replaced = 0
    for i, path in enumerate(paths):
        for attempt in range(1, 100):
            h = np.uint64(_phash_file(path))
            if i == 0 or int(np.bitwise_count(hashes[:i] ^ h).min()) > DISTINCT_BITS:
                break
            _render_one(i, random_scene(np.random.default_rng([seed, i, attempt])), px, path)
            replaced += 1
        hashes[i] = h
    return replaced


def subset_folder(root: Path, paths: list[Path], n: int) -> Path:
    """A folder holding (hard links to) the first ``n`` photos, rebuilt each run (a re-drawn photo is a new file)."""
    folder = root / f"n{n}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for path in paths[:n]:
        try:
            os.link(path, folder / path.name)
        except OSError:
            shutil.copy2(path, folder / path.name)
    return folder


# ---------------------------------------------------------------------------------------------------- memory


@dataclass
class MemorySampler:
    """Samples this process's RSS and the total RSS of child processes that appear after ``start()``."""

    interval_s: float = 0.05
    parent_peak: int = 0
    workers_peak: int = 0
    total_peak: int = 0  # peak of parent + workers in the same sample
    samples: int = 0
    worker_pids: set[int] = field(default_factory=set)
    worker_cpu: dict[int, float] = field(default_factory=dict)  # last seen user+system CPU s per worker

    def start(self) -> None:
        import psutil

        self._proc = psutil.Process()
        self._old_children = {c.pid for c in self._proc.children(recursive=True)}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._sample()
        self._thread.start()

    def stop(self) -> None:
        self._sample()
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def _sample(self) -> None:
        import psutil

        parent = self._proc.memory_info().rss
        workers = 0
        for child in self._proc.children(recursive=True):
            if child.pid in self._old_children:
                continue
            try:
                with child.oneshot():
                    workers += child.memory_info().rss
                    cpu = child.cpu_times()
            except psutil.Error:  # the worker exited between listing and reading
                continue
            self.worker_pids.add(child.pid)
            self.worker_cpu[child.pid] = cpu.user + cpu.system
        self.samples += 1
        self.parent_peak = max(self.parent_peak, parent)
        self.workers_peak = max(self.workers_peak, workers)
        self.total_peak = max(self.total_peak, parent + workers)


# ---------------------------------------------------------------------------------------------------- ingest


@dataclass
class Row:
    n: int
    px: int
    mode: str
    workers: int
    wall_s: float
    accepted: int
    parent_mib: float
    workers_mib: float
    total_mib: float
    cores_busy: float  # (parent + workers CPU seconds) / wall seconds

    @property
    def per_s(self) -> float:
        return self.n / self.wall_s


def run_ingest(folder: Path, n: int, px: int, resolution: int, workers: int, interval_s: float) -> Row:
    """Ingest ``folder`` into a fresh BRANDTUNE_HOME and measure it."""
    import json

    import psutil

    from brandtune.config import IngestConfig, load_brand
    from brandtune.ingest import ingest
    from brandtune.settings import Settings

    brand = load_brand(REPO_ROOT / "data" / "brands" / "acme")
    cfg = IngestConfig.for_brand(brand, resolution=resolution, workers=workers)
    home = Path(tempfile.mkdtemp(prefix="brandtune-bench-home-"))
    os.environ["BRANDTUNE_HOME"] = str(home)
    try:
        settings = Settings.from_env()
        gc.collect()
        proc = psutil.Process()
        base_rss = proc.memory_info().rss
        cpu0 = sum(proc.cpu_times()[:2])
        sampler = MemorySampler(interval_s=interval_s)
        sampler.start()
        start = time.perf_counter()
        try:
            result = ingest(brand, folder, cfg, settings, progress=False)
        finally:
            wall = time.perf_counter() - start
            sampler.stop()
        cpu = sum(proc.cpu_times()[:2]) - cpu0 + sum(sampler.worker_cpu.values())
        if result.num_images < n:
            report = json.loads(result.report_path.read_text())
            reasons: dict[str, int] = {}
            for item in report["rejected"]:
                reasons[item["reason"]] = reasons.get(item["reason"], 0) + 1
            print(f"  WARNING: {n - result.num_images} of {n} photos rejected: {reasons}", flush=True)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return Row(
        n=n,
        px=px,
        mode="serial" if workers == 1 else "pool",
        workers=len(sampler.worker_pids) if workers != 1 else 1,
        wall_s=wall,
        accepted=result.num_images,
        parent_mib=(sampler.parent_peak - base_rss) / MIB,
        workers_mib=sampler.workers_peak / MIB,
        total_mib=(sampler.total_peak - base_rss) / MIB,
        cores_busy=cpu / wall,
    )


# ---------------------------------------------------------------------------------------------------- report


def header_lines() -> list[str]:
    """Machine, Python, Pillow and thread settings."""
    import PIL
    import psutil

    cpu_model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = cpu_model or line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    threads = ", ".join(f"{k}={os.environ.get(k, 'unset')}" for k in THREAD_VARS)
    try:
        from threadpoolctl import threadpool_info

        pools = (
            ", ".join(f"{p['internal_api']}={p['num_threads']}" for p in threadpool_info()) or "none loaded"
        )
    except ImportError:
        pools = "threadpoolctl not installed"
    load = ", ".join(f"{x:.2f}" for x in psutil.getloadavg())
    return [
        f"date: {datetime.now(UTC).isoformat(timespec='seconds')}",
        f"machine: {cpu_model or 'unknown cpu'} ({platform.machine()}), os.cpu_count()={os.cpu_count()}, "
        f"{psutil.virtual_memory().total / (1 << 30):.1f} GiB RAM, {platform.system()} {platform.release()}",
        f"python: {platform.python_version()}, Pillow {PIL.__version__}",
        f"threads: {threads}; native pools in this process: {pools}; Pillow decodes/resizes on one thread",
        f"load average at start (1/5/15 min): {load}",
    ]


def table(rows: list[Row]) -> list[str]:
    """The results as a Markdown table."""
    lines = [
        "| N | px | mode | workers | wall s | images/s | peak extra MiB (parent) | peak extra MiB (workers total)"
        " | peak extra MiB (parent + workers) | cores busy |",
        "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r.n} | {r.px} | {r.mode} | {r.workers} | {r.wall_s:.2f} | {r.per_s:.1f} | {r.parent_mib:.1f} "
            f"| {r.workers_mib:.1f} | {r.total_mib:.1f} | {r.cores_busy:.2f} |"
        )
    return lines


def ratios(rows: list[Row]) -> list[str]:
    """Linearity (time per image, largest N over smallest) and pool speed-up, per mode and size."""
    out = []
    sizes = sorted({r.n for r in rows})
    by = {(r.n, r.mode): r for r in rows}
    if len(sizes) > 1:
        lo, hi = sizes[0], sizes[-1]
        for mode in ("serial", "pool"):
            if (lo, mode) in by and (hi, mode) in by:
                a, b = by[lo, mode], by[hi, mode]
                ratio = (b.wall_s / b.n) / (a.wall_s / a.n)
                out.append(
                    f"linearity ({mode}): time per image at N={hi} / at N={lo} = "
                    f"{b.wall_s / b.n * 1000:.1f} ms / {a.wall_s / a.n * 1000:.1f} ms = {ratio:.2f}"
                )
    for n in sizes:
        if (n, "serial") in by and (n, "pool") in by:
            s, p = by[n, "serial"], by[n, "pool"]
            out.append(f"pool speed-up at N={n}: serial wall / pool wall = {s.wall_s / p.wall_s:.2f}x")
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000], help="numbers of photos")
    parser.add_argument("--px", type=int, default=1024, help="side of the generated square photos")
    parser.add_argument("--resolution", type=int, default=64, help="ingest output resolution")
    parser.add_argument("--seed", type=int, default=20261126, help="scene seed")
    parser.add_argument(
        "--photos-dir", type=Path, default=None, help="photo cache (default: under the temp dir)"
    )
    parser.add_argument("--sample-ms", type=float, default=50.0, help="RSS sampling interval")
    parser.add_argument("--modes", nargs="+", default=["serial", "pool"], choices=["serial", "pool"])
    return parser.parse_args(argv)


def start_resource_tracker() -> int | None:
    """Start multiprocessing's resource tracker now, so no ingest row counts it as a worker; returns its pid."""
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()
    return getattr(resource_tracker._resource_tracker, "_pid", None)


def rss_of(pid: int | None) -> str:
    import psutil

    try:
        return f"{psutil.Process(pid).memory_info().rss / MIB:.1f} MiB" if pid else "unknown"
    except psutil.Error:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tracker_pid = start_resource_tracker()
    root = args.photos_dir or Path(tempfile.gettempdir()) / f"brandtune-bench-ingest-{args.px}px-{args.seed}"
    paths = generate_photos(root, max(args.sizes), args.px, args.seed)
    rows: list[Row] = []
    for n in sorted(args.sizes):
        folder = subset_folder(root, paths, n)
        for mode in args.modes:
            row = run_ingest(
                folder, n, args.px, args.resolution, 1 if mode == "serial" else 0, args.sample_ms / 1e3
            )
            print(
                f"N={n} {mode}: {row.wall_s:.2f} s, accepted {row.accepted}/{n}, "
                f"+{row.parent_mib:.1f} MiB parent, +{row.workers_mib:.1f} MiB workers",
                flush=True,
            )
            rows.append(row)
    print()
    print("\n".join(header_lines()))
    print(
        f"multiprocessing resource tracker (one per process, started by its first pool; not in the table): "
        f"{rss_of(tracker_pid)} RSS"
    )
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print()
    print("\n".join(table(rows)))
    print()
    print("\n".join(ratios(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
