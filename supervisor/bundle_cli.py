"""`coproc bundle build` and `coproc bundle verify`: Tyk's bundler, and its check.

    coproc bundle build [-m manifest.json] [-o bundle.zip] [-k private.pem | -y]
    coproc bundle verify BUNDLE.zip [--key public.pem]

Without `-k` and without `-y`, build asks on a terminal whether to write an
unsigned bundle and refuses when there is no terminal to ask.  Exit codes:
0 done, 1 refused (the reason on stderr), 2 usage.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from supervisor.bundles.build import BuildError, build_bundle, verify_archive
from supervisor.bundles.extract import UnsafeBundle
from supervisor.bundles.verify import VerifyError, load_public_key

__all__ = ["add_parser", "run"]


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bundle = commands.add_parser("bundle", help="build or verify a plugin bundle (Tyk format)",
                                 description="Build or verify a Tyk plugin bundle.")
    actions = bundle.add_subparsers(dest="bundle_command", required=True, metavar="ACTION")
    build = actions.add_parser("build", help="zip, checksum and sign the files of a manifest",
                               description="Build a bundle from manifest.json and its "
                               "file_list, with checksum and (with -k) signature.")
    build.add_argument("-m", "--manifest", type=Path, default=Path("manifest.json"),
                       help="the manifest (default %(default)s)")
    build.add_argument("-o", "--output", type=Path, default=Path("bundle.zip"),
                       help="the bundle to write (default %(default)s)")
    build.add_argument("-k", "--key", type=Path,
                       help="PEM private key to sign with (RSA PRIVATE KEY or PRIVATE KEY)")
    build.add_argument("-y", "--skip-signing", action="store_true",
                       help="write an unsigned bundle without asking")
    verify = actions.add_parser("verify", help="check a bundle's checksum and signature",
                                description="Check a bundle as the gateway checks a download.")
    verify.add_argument("bundle", type=Path, metavar="BUNDLE.zip")
    verify.add_argument("--key", type=Path,
                        help="PEM public key (PUBLIC KEY or RSA PUBLIC KEY); with it an "
                        "unsigned bundle is refused")


def _confirm_unsigned() -> bool:
    if not sys.stdin.isatty():
        print("coproc bundle build: no signing key (-k) and no terminal to confirm an unsigned "
              "bundle; pass -y to build it unsigned", file=sys.stderr)
        return False
    answer = input('The bundle will be unsigned; type "y" or "yes" to confirm: ')
    return answer.strip().lower() in ("y", "yes")


def run(args: argparse.Namespace) -> int:
    if args.bundle_command == "build":
        if args.key is None and not args.skip_signing and not _confirm_unsigned():
            print("coproc bundle build: aborted", file=sys.stderr)
            return 1
        try:
            manifest = build_bundle(args.manifest, args.output, args.key)
        except BuildError as exc:
            print(f"coproc bundle build: {exc}", file=sys.stderr)
            return 1
        signed = "signed" if manifest["signature"] else "unsigned"
        print(f"wrote {args.output} ({len(manifest['file_list'])} files, {signed}, "
              f"checksum {manifest['checksum']})")
        return 0
    try:
        key = load_public_key(args.key) if args.key is not None else None
        checked = verify_archive(args.bundle, key)
    except (ValueError, OSError, VerifyError, UnsafeBundle) as exc:
        print(f"coproc bundle verify: {exc}", file=sys.stderr)
        return 1
    what = "signature and checksum" if key is not None else "checksum"
    print(f"{args.bundle}: {what} OK ({len(checked.file_list)} files)")
    return 0
