"""Training-loader benchmark: ArchiveDataset samples/s as a ratio to reading SSL4EO-S12 GeoTIFFs.

Both sides see the same (patch, season) images, built in a temporary directory:

* **Archive**: a Zarr archive from the synthetic source (default 64 locations × 4 seasons, 264 px,
  S2 L1C only, the manifest's default compressor: blosc lz4 level 5 with byte shuffle, in shards), read with
  :class:`train.data.ArchiveDataset`. Default ``--view-mode seasonal``: per sample two chunk reads
  (two seasons of one location), SoftCon normalisation and **two augmented views**
  (``ms_view_transforms`` of view 1 and view 2, crop to ``--crop``, 112 by default), labels.
* **Baseline**: the same images written in the SSL4EO-S12 layout ``s2c/<id>/<acq>/B*.tif`` (one
  uncompressed uint16 GeoTIFF per band at its native resolution: 264 px for 10 m bands, 132 px for
  20 m, 44 px for 60 m, lon/lat CRS), read the way the original loader does
  (``SSL4EO.get_array`` in SSL4EO-S12's ``ssl4eo_dataset.py``): one sample = one location, every
  season folder, every band opened with rasterio and resampled to 264 px bilinear (GDAL's bilinear
  on read; the original uses OpenCV ``INTER_LINEAR_EXACT``), stacked to (4, 13, 264, 264). Its
  seasonal training pair is then drawn from those four seasons. **No normalisation or
  augmentation** on this side (that flatters the baseline). A stricter variant is also timed
  (``same-images``): one sample = only the band files of the image(s) one of our samples uses (its
  season and, in seasonal mode, one other season of the location: 26 files), i.e. as if the
  original loader read only what the pair needs.

Both are driven through a torch DataLoader with the same batch size and worker count (default 0:
everything in the main process, one torch thread); the best of ``--repeats`` full passes is kept
after one warm-up pass. Goal: ratio ≥ 3 against the original-style loader.

Usage: ``.venv/bin/python benchmarks/bench_loader.py [--locations 64] [--size 264] [--crop 112]
[--view-mode seasonal] [--workers 0] [--batch-size 32] [--repeats 3] [--keep DIR]``
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import torch
from common import synthetic_archive
from rasterio.enums import Resampling
from rasterio.transform import from_bounds
from torch.utils.data import DataLoader, Dataset

from pipeline.archive import Archive
from pipeline.bands import S2_L1C_BANDS, S2_NATIVE_RESOLUTION_M
from train.augment import ms_view_transforms
from train.data import ArchiveDataset, build_dataloader


def write_geotiffs(store: Path, root: Path) -> list[Path]:
    """The archive's done (patch, season) S2 L1C images as SSL4EO-S12 per-band GeoTIFFs; their folders."""
    group = Archive(str(store)).open()
    ids = group["patch_id"][:]
    image_ids, lon, lat = group["image_id"][:], group["lon"][:], group["lat"][:]
    arr = group["s2_l1c"]
    folders = []
    for p in Archive(str(store)).done_patches():
        patch = arr[int(p)]  # (S, 13, H, W)
        size = patch.shape[-1]
        half = size * 10 / 2 / 111_320.0  # patch half-width in degrees (lon/lat CRS, as SSL4EO-S12)
        for s in range(patch.shape[0]):
            folder = root / "s2c" / str(ids[p]) / str(image_ids[p, s, 0])
            folder.mkdir(parents=True, exist_ok=True)
            for b, band in enumerate(S2_L1C_BANDS):
                f = S2_NATIVE_RESOLUTION_M[band] // 10
                n = size // f
                data = patch[s, b, :n * f, :n * f].reshape(n, f, n, f).mean(axis=(1, 3)).round().astype(np.uint16)
                transform = from_bounds(lon[p] - half, lat[p] - half, lon[p] + half, lat[p] + half, n, n)
                with rasterio.open(folder / f"{band}.tif", "w", driver="GTiff", width=n, height=n, count=1,
                                   dtype="uint16", crs="EPSG:4326", transform=transform) as dst:
                    dst.write(data, 1)
            folders.append(folder)
    return folders


class GeoTiffDataset(Dataset):
    """The original-style reader: per sample, the 13 band files of each of ``groups[i]``'s season
    folders, each band resampled to ``size`` bilinear; (n_seasons, 13, size, size) float32.
    """

    def __init__(self, groups: list[list[Path]], size: int):
        self.groups, self.size = groups, size

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, i: int) -> dict:
        seasons = []
        for folder in self.groups[i]:
            bands = []
            for band in S2_L1C_BANDS:
                with rasterio.open(folder / f"{band}.tif") as src:
                    bands.append(src.read(1, out_shape=(self.size, self.size), resampling=Resampling.bilinear))
            seasons.append(np.stack(bands))
        return {"image": torch.from_numpy(np.stack(seasons).astype(np.float32))}


def samples_per_second(loaders: dict[str, object], repeats: int) -> dict[str, float]:
    """Best samples/s of each loader over ``repeats`` passes, the loaders' passes interleaved (so a
    change in machine load hits all of them alike), after one warm-up pass each.
    """
    for loader in loaders.values():  # warm-up: worker start, page cache, lazy imports
        for _ in loader:
            pass
    best = dict.fromkeys(loaders, 0.0)
    for r in range(repeats):
        for name, loader in loaders.items():
            if hasattr(loader, "set_epoch"):
                loader.set_epoch(r + 1)
            t0 = time.perf_counter()
            n = sum(len(next(iter(batch.values()))) for batch in loader)
            best[name] = max(best[name], n / (time.perf_counter() - t0))
    return best


def main(argv: list[str] | None = None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--locations", type=int, default=64, help="synthetic locations (× 4 seasons)")
    ap.add_argument("--size", type=int, default=264, help="patch size in px (SSL4EO-S12: 264)")
    ap.add_argument("--crop", type=int, default=112, help="RandomResizedCrop output size of both views")
    ap.add_argument("--view-mode", choices=["seasonal", "same_season"], default="seasonal",
                    help="ArchiveDataset view mode (seasonal: two seasons per sample, as SSL4EO-S12)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers (both sides)")
    ap.add_argument("--repeats", type=int, default=3, help="timed passes; the best is kept")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads in the main process")
    ap.add_argument("--keep", type=Path, default=None, help="build in this directory and keep it")
    args = ap.parse_args(argv)
    if args.size % 6:
        ap.error("--size must be a multiple of 6 (10/20/60 m native grids)")
    torch.set_num_threads(args.threads)

    tmp = args.keep or Path(tempfile.mkdtemp(prefix="bench_loader_"))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        store = tmp / "bench.zarr"
        t0 = time.perf_counter()
        if not store.exists():
            synthetic_archive(store, args.locations, args.size, modalities=("s2_l1c",))
        folders = sorted((tmp / "s2c").glob("*/*")) if (tmp / "s2c").exists() else write_geotiffs(store, tmp)
        print(f"built {len(folders)} images ({args.locations} locations, {args.size} px) in "
              f"{time.perf_counter() - t0:.1f}s under {tmp}", file=sys.stderr)

        ds = ArchiveDataset(str(store), view_mode=args.view_mode,
                            transforms=(ms_view_transforms(args.crop, 1), ms_view_transforms(args.crop, 2)))
        assert len(ds) == len(folders), (len(ds), len(folders))
        loaders = {"ours": build_dataloader(ds, args.batch_size, num_workers=args.workers, shuffle=True, seed=0,
                                            drop_last=False)}
        by_location: dict[str, list[Path]] = {}
        for folder in folders:
            by_location.setdefault(folder.parent.name, []).append(folder)
        rng = np.random.default_rng(0)
        same_images = []  # exactly what one of our samples reads: its image, plus another season when seasonal
        for folder in folders:
            others = [f for f in by_location[folder.parent.name] if f != folder]
            pair = [folder, others[rng.integers(len(others))]] if args.view_mode == "seasonal" else [folder]
            same_images.append(pair)
        for name, groups in (("location", list(by_location.values())), ("same-images", same_images)):
            loaders[name] = DataLoader(GeoTiffDataset(groups, args.size), batch_size=args.batch_size, shuffle=True,
                                       num_workers=args.workers, generator=torch.Generator().manual_seed(0))
        rates = samples_per_second(loaders, args.repeats)
        ours = rates["ours"]
    finally:
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)
    ratio, strict = ours / rates["location"], ours / rates["same-images"]
    n_images = 2 if args.view_mode == "seasonal" else 1
    print(f"loader ({args.view_mode}, 2 views, crop {args.crop}, {args.workers} workers): {ours:.1f} samples/s; "
          f"GeoTIFF original-style (4 seasons x 13 band files per location, resampled to {args.size}, "
          f"no augmentation): {rates['location']:.1f} samples/s; ratio {ratio:.2f} (goal >= 3: "
          f"{'OK' if ratio >= 3 else 'BELOW GOAL'}); strict baseline reading only the {n_images} image(s) a "
          f"sample uses ({13 * n_images} band files): {rates['same-images']:.1f} samples/s, ratio {strict:.2f}")
    return ratio


if __name__ == "__main__":
    main()
