"""Check a prediction folder against the challenge contract and archive it.

With --input (the folder the predictions were made from) every input case must have exactly
one output under the contract's name (FLARE: <case>.nii.gz for <case>_0000.nii.gz; BraTS:
<ID>.nii.gz for the folder <ID>/), an integer label image with labels in the task's set, on
the input's grid (size, spacing, origin, direction). Every problem is listed, one line each;
the archive is written only when there are none. --grand-challenge uploads through gcapi,
as a dry run unless a token is given (--token or $GC_TOKEN)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", choices=["flare", "brats"], required=True)
    parser.add_argument("--pred", required=True, metavar="DIR")
    parser.add_argument("--input", metavar="DIR", help="the input folder of the predictions (names + geometry checks)")
    parser.add_argument("--zip", metavar="FILE", help="archive to write (default: <pred>.zip beside the folder)")
    parser.add_argument("--label-convention", choices=["2023", "legacy", "brats2024"], default="2023",
                        help="BraTS label values (brats2024: 1,2,3 and 4 = resection cavity)")
    parser.add_argument("--grand-challenge", action="store_true", help="upload through gcapi (dry run unless a token is given)")
    parser.add_argument("--archive", default=None, metavar="SLUG", help="grand-challenge archive slug")
    parser.add_argument("--token", default=None, help="grand-challenge API token (default: $GC_TOKEN)")
    parser.add_argument("--socket", default="generic-medical-image", help="the archive's image socket slug")
    parser.add_argument("--gc-url", default=None, help="API base URL (default: https://grand-challenge.org/api/v1/)")


def run(args: argparse.Namespace) -> int:
    import os
    import sys
    from pathlib import Path

    from pipeline.errors import SegpipeError
    from pipeline.submission.archive import zip_folder
    from pipeline.submission.contract import check_predictions

    pred = Path(args.pred)
    result = check_predictions(args.task, pred, args.input, convention=args.label_convention)
    if result.problems:
        for line in result.problems:
            print(f"submit: {line}", file=sys.stderr)
        raise SegpipeError(f"{pred}: {len(result.problems)} problem(s) with the {args.task} contract; nothing archived")
    names = sorted(p.name for p in pred.iterdir() if p.is_file() and not p.name.startswith("."))
    dest = Path(args.zip) if args.zip else pred.with_suffix(".zip")
    zip_folder(pred, dest, names)
    print(f"submit: {len(names)} {args.task} prediction(s) checked"
          f"{' against ' + str(args.input) if args.input else ' (names, types, labels only: no --input)'}; "
          f"archive {dest} ({dest.stat().st_size / 2**20:.1f} MiB)")
    if args.grand_challenge:
        from pipeline.submission.gc import DEFAULT_URL, UploadPlan, upload

        if not args.archive:
            raise SegpipeError("--grand-challenge needs --archive SLUG")
        plan = UploadPlan(args.archive, [pred / n for n in names], args.gc_url or DEFAULT_URL, args.socket)
        for line in plan.lines():
            print(line)
        token = args.token or os.environ.get("GC_TOKEN")
        if not token:
            print("grand-challenge: dry run (no --token / $GC_TOKEN): nothing uploaded")
        else:
            items = upload(plan, token)
            print(f"grand-challenge: {len(items)} archive item(s) created")
    return 0
