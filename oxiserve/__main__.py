"""CLI: ``python -m oxiserve``; every flag is derived from a Config field."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from oxiserve.config import Config, env_name, field_type, parse_value
from oxiserve.config_file import read_config_file


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m oxiserve",
        description="oxiserve: a small, fast OpenAI-compatible inference server. "
        "Every option can also be set with the environment variable shown.",
        formatter_class=lambda prog: argparse.HelpFormatter(prog, max_help_position=36, width=100),
    )
    parser.add_argument(
        "--config", metavar="PATH", default=argparse.SUPPRESS,
        help="a TOML file of settings (keys: the option names without dashes); the command "
        "line and the environment override it [env OXISERVE_CONFIG]",
    )  # fmt: skip
    for f in dataclasses.fields(Config):
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata['help']} [env {env_name(f.name)}]"
        if f.metadata.get("choices"):
            help_text = (
                f"{f.metadata['help']}: {', '.join(f.metadata['choices'])} [env {env_name(f.name)}]"
            )
        if field_type(f) is tuple:
            parser.add_argument(
                flag, dest=f.name, action="extend", nargs="+", default=argparse.SUPPRESS,
                help=help_text, metavar=f.name.upper(),
            )  # fmt: skip
            continue
        if field_type(f) is bool:
            parser.add_argument(
                flag, dest=f.name, action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS, help=help_text + f" (default: {f.default})",
            )  # fmt: skip
            continue
        parser.add_argument(
            flag,
            dest=f.name,
            type=_converter(f),
            choices=f.metadata.get("choices"),
            default=argparse.SUPPRESS,
            help=help_text + f" (default: {f.default!r})",
            metavar=f.name.upper(),
        )
    return parser


def _converter(f: dataclasses.Field[Any]) -> Any:
    def convert(raw: str) -> Any:
        try:
            return parse_value(f, raw)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = field_type(f).__name__
    return convert


def config_from_args(
    argv: Sequence[str] | None = None, environ: dict[str, str] | None = None
) -> Config:
    """The command line over the environment over ``--config``'s file over the defaults."""
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    env = dict(os.environ) if environ is None else environ
    path = args.pop("config", None) or env.get("OXISERVE_CONFIG")
    try:
        defaults = read_config_file(path) if path else None
        return Config.from_env(env, defaults=defaults, **args)
    except ValueError as exc:
        parser.error(str(exc))


def main(argv: Sequence[str] | None = None) -> int:
    config = config_from_args(argv)
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from oxiserve import loops
    from oxiserve.errors import StartupError
    from oxiserve.server import serve

    try:
        loop_name, factory = loops.resolve(config.loop)
    except loops.LoopUnavailable as exc:
        print(f"oxiserve: {exc}", file=sys.stderr)
        return 2
    if config.workers > 1:
        from oxiserve.supervisor import supervise

        try:
            return supervise(config, loop_name)
        except OSError as exc:
            print(f"oxiserve: cannot serve on {config.host}:{config.port}: {exc}",
                  file=sys.stderr)  # fmt: skip
            return 1
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(serve(config, loop_name=loop_name))
    except OSError as exc:
        print(f"oxiserve: cannot serve on {config.host}:{config.port}: {exc}", file=sys.stderr)
        return 1
    except StartupError as exc:
        print(f"oxiserve: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
