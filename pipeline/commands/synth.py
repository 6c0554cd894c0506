"""Write synthetic FLARE-like CT or BraTS-like MRI data in the challenge layouts.

FLARE22: OUT/images/FLARE22_Tr_XXXX_0000.nii.gz + OUT/labels/FLARE22_Tr_XXXX.nii.gz,
OUT/unlabeled/…, OUT/validation/… (+ validation_labels/). BraTS: one folder per case, 2023
(BraTS-GLI-XXXXX-000-{t1c,t1n,t2f,t2w,seg}) or legacy (BraTS20_Training_XXX_{flair,t1,t1ce,t2,seg})
naming, optionally with modality files dropped at per-modality rates. OUT/synth.json is the
manifest. The same seed always gives the same data.
"""

from __future__ import annotations

import argparse

FLARE_ONLY = ("unlabeled", "validation")
BRATS_ONLY = ("layout", "convention", "missing_rates", "atlas")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=["flare", "brats"])
    parser.add_argument("out", metavar="OUT", help="output folder (created; must be empty or a previous synth output)")
    parser.add_argument("--cases", type=int, default=4, metavar="N", help="labelled cases (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="base seed: same seed → identical data (default 0)")
    parser.add_argument("--size", choices=["small", "full"], default="small",
                        help="small: CI-sized (FLARE 128²×48–64 at ~3×3×5 mm, BraTS 96²×62 at 2.5 mm); "
                             "full: FLARE 512²×80–200 at 0.6–0.9×2–5 mm, BraTS 240²×155 at 1 mm")
    parser.add_argument("--orientation", choices=["lps", "ras", "permuted", "oblique"], default="lps",
                        help="direction stored in the headers (anatomy is always physically correct)")
    parser.add_argument("--workers", type=int, default=1, metavar="N", help="cases generated in parallel (default 1)")
    parser.add_argument("--force", action="store_true", help="write into a non-empty folder that is not synth output")
    flare = parser.add_argument_group("flare")
    flare.add_argument("--unlabeled", type=int, default=None, metavar="M", help="unlabelled cases (default 0)")
    flare.add_argument("--validation", type=int, default=None, metavar="K", help="held-out cases with labels (default 0)")
    brats = parser.add_argument_group("brats")
    brats.add_argument("--layout", choices=["2023", "legacy"], default=None, help="file naming (default 2023)")
    brats.add_argument("--convention", choices=["2023", "legacy"], default=None,
                       help="label values: 2023 = 1,2,3; legacy = 1,2,4 (default: the layout's own)")
    brats.add_argument("--missing-rates", default=None, metavar="SPEC",
                       help="drop modality files per case, e.g. flair=0.6,t1=0.2,t1ce=0.4,t2=0.8 (never all four)")
    brats.add_argument("--atlas", choices=["auto", "mni", "procedural"], default=None,
                       help="brain anatomy: MNI152 from the nilearn wheel (auto when installed) or procedural")


def run(args: argparse.Namespace) -> int:
    from pipeline.errors import SegpipeError
    from pipeline.synth import write_brats_dataset, write_flare_dataset

    wrong = BRATS_ONLY if args.kind == "flare" else FLARE_ONLY
    given = [f"--{name.replace('_', '-')}" for name in wrong if getattr(args, name) is not None]
    if given:
        raise SegpipeError(f"{', '.join(given)}: only for synth "
                           f"{'brats' if args.kind == 'flare' else 'flare'}")
    common = {"seed": args.seed, "size": args.size, "orientation": args.orientation, "force": args.force, "workers": args.workers}
    if args.kind == "flare":
        manifest = write_flare_dataset(args.out, cases=args.cases, unlabeled=args.unlabeled or 0,
                                       validation=args.validation or 0, **common)
    else:
        manifest = write_brats_dataset(args.out, cases=args.cases, layout=args.layout or "2023", convention=args.convention,
                                       missing_rates=args.missing_rates, atlas=args.atlas or "auto", **common)
    print(f"wrote {len(manifest['cases'])} {args.kind} cases ({len(manifest['files'])} files) to {args.out}")
    return 0
