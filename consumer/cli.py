"""The `feature-consumer` command line."""

from __future__ import annotations

import argparse
import sys

from consumer import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="feature-consumer",
        description="Consume Avro feature records from Kafka and upsert them into Feast's "
        "Cassandra online store; an older event never overwrites a newer value.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    parser.parse_args(argv)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
