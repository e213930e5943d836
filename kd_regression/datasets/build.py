"""Builds MPIIGaze or Multi-PIE from the user's manual directory into a tfds data directory.

  python -m kd_regression.datasets.build mpiigaze --manual_dir=MANUAL --data_dir=DATA
  python -m kd_regression.datasets.build multipie --manual_dir=MANUAL --data_dir=DATA \\
      [--image_size=64] [--illuminations=7]

The same as tfds's ``tfds build --imports kd_regression.datasets.<module> <name>
--manual_dir=... --data_dir=... --file_format=array_record``, whose command line, in
tensorflow-datasets 4.9.10, does not start without apache-beam and mlcroissant installed.
A dataset already built in DATA is left as it is.
"""

from __future__ import annotations

import argparse
import sys

from kd_regression.datasets import manual


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kd_regression.datasets.build", description=__doc__.split("\n")[0]
    )
    parser.add_argument("dataset", choices=("mpiigaze", "multipie"))
    parser.add_argument("--manual_dir", required=True, help="where the released files are")
    parser.add_argument("--data_dir", default=None, help="tfds data directory (tfds default)")
    parser.add_argument("--image_size", type=int, default=64, help="Multi-PIE only")
    parser.add_argument(
        "--illuminations",
        default="7",
        help="Multi-PIE only: comma-separated shots 0-19, or 'all'",
    )
    args = parser.parse_args(argv)
    try:
        if args.dataset == "mpiigaze":
            from kd_regression.datasets import mpiigaze

            b = mpiigaze.prepare(args.data_dir, args.manual_dir)
        else:
            from kd_regression.datasets import multipie

            shots = (
                range(multipie.NUM_ILLUMINATIONS)
                if args.illuminations == "all"
                else [int(s) for s in args.illuminations.split(",")]
            )
            b = multipie.prepare(
                args.data_dir, args.manual_dir, image_size=args.image_size, illuminations=shots
            )
    except (manual.ManualDataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sizes = ", ".join(f"{name}: {s.num_examples}" for name, s in b.info.splits.items())
    print(f"{b.name} ({b.builder_config.name if b.builder_config else 'default'}) in {b.data_dir}")
    print(f"examples per split: {sizes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
