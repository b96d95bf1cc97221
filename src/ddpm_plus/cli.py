"""The `ddpm-plus` command line: `ddpm-plus sample ...` and `ddpm-plus bpd ...`."""

import argparse
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    from ddpm_plus import cli_bpd, cli_sample

    parser = argparse.ArgumentParser(prog="ddpm-plus", description="DDPM+ tools for diffusers pipelines.")
    subcommands = parser.add_subparsers(dest="command", required=True)
    cli_sample.add_parser(subcommands)
    cli_bpd.add_parser(subcommands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `ddpm-plus` console script; each sub-command sets `func(args) -> int`."""
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
