"""Command line: ``python -m bench run|compare|footprint``."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from bench.catalog import LOOPS, OXISERVE, SCENARIOS, SERVERS, installed_loops
from bench.compare import FULL, QUICK, ServerResult, Sizes, compare, default_servers
from bench.compare_report import goal_lines, render_markdown, render_terminal
from bench.load import LoadSpec
from bench.meta import envelope
from bench.procs import Pinning, ServerStartError
from bench.report import RESULTS_DIR, write_result
from bench.run import RunOptions, oxiserve_args, run_benchmark
from bench.scenarios import Workload


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def _loops(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in LOOPS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"comma-separated names of {', '.join(LOOPS)}")
    return names


def _servers_loops(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--loops",
        type=_loops,
        default=None,
        metavar="LOOP[,LOOP]",
        help="server event loops, one comparison each with every server on it"
        f" (default: {','.join(LOOPS)}, those installed)",
    )


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="do not pin client and server to different cores",
    )
    parser.add_argument(
        "--loop",
        choices=("auto", "uvloop", "asyncio"),
        default="auto",
        help="client event loop (auto: uvloop when installed)",
    )
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=RESULTS_DIR,
        help="where result JSON files go (default: bench/results)",
    )


def _run_parser(sub: Any) -> None:
    p = sub.add_parser("run", help="load one server with one scenario")
    p.add_argument("--scenario", choices=sorted(SCENARIOS), default="chat-stream")
    p.add_argument("--url", help="base URL of a running server (default: start one locally)")
    p.add_argument(
        "--server",
        choices=sorted(SERVERS),
        default=OXISERVE.key,
        help="server to start when --url is not given",
    )
    p.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra command-line argument for the started server (repeatable)",
    )
    p.add_argument("--concurrency", type=_positive_int, default=1)
    p.add_argument(
        "--rate", type=_positive_float, help="requests/s, Poisson (default: closed loop)"
    )
    p.add_argument("--requests", type=_positive_int, help="stop after this many requests")
    p.add_argument("--duration", type=_positive_float, help="stop after this many seconds")
    p.add_argument("--timeout", type=_positive_float, default=30.0, help="per request, seconds")
    p.add_argument("--prompt-tokens", type=int, default=32, help="prompt length in words")
    p.add_argument("--max-tokens", type=_positive_int, default=16)
    p.add_argument(
        "--no-usage",
        dest="usage",
        action="store_false",
        help="do not ask streams for a usage chunk",
    )
    p.add_argument("--model", help="model name (default: first of GET /v1/models)")
    p.add_argument("--api-key", help="sent as 'Authorization: Bearer KEY'")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--subscribers", type=_positive_int, default=4, help="fanout readers per run")
    p.add_argument(
        "--sim-error",
        type=int,
        metavar="STATUS",
        help="send 'x-sim-error: STATUS' (simulator failure injection)",
    )
    p.add_argument(
        "--sim-error-every",
        type=_positive_int,
        default=1,
        metavar="N",
        help="... on every N-th request only",
    )
    for flag in ("--sim-ttft-ms", "--sim-itl-ms", "--sim-failure-rate"):
        p.add_argument(flag, type=float, help="passed to a locally started oxiserve")
    p.add_argument("--sim-failure-types", help="passed to a locally started oxiserve")
    p.add_argument("--burst", action="store_true", help="start a peer in --burst mode")
    p.add_argument(
        "--server-loop",
        choices=LOOPS,
        help="event loop of the started server (default: its own; oxiserve: auto, peers: asyncio)",
    )
    p.add_argument("--plot", action="store_true", help="also write a PNG (needs matplotlib)")
    _common(p)


def _compare_parser(sub: Any) -> None:
    p = sub.add_parser("compare", help="oxiserve against every peer, same load, one run")
    p.add_argument("--quick", action="store_true", help="a much smaller run (seconds, not minutes)")
    p.add_argument("--duration", type=_positive_float, help="seconds per load measurement")
    p.add_argument("--servers", nargs="+", choices=sorted(SERVERS), help="default: all")
    p.add_argument("--burst", action="store_true", help="peers stream without yielding")
    p.add_argument("--no-footprint", dest="footprint", action="store_false")
    _servers_loops(p)
    _common(p)


def _footprint_parser(sub: Any) -> None:
    p = sub.add_parser("footprint", help="cold start, RSS and import time of each server")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--servers", nargs="+", choices=sorted(SERVERS), help="default: all")
    _servers_loops(p)
    _common(p)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = root.add_subparsers(dest="command", required=True)
    _run_parser(sub)
    _compare_parser(sub)
    _footprint_parser(sub)
    p = sub.add_parser("engine", help="oxillama's own tokens/s against tokens/s through oxiserve")
    p.add_argument("--seconds", type=_positive_float, default=3.0)
    _common(p)
    p = sub.add_parser("sim-cost", help="server CPU per simulated token at ITL 20 ms, 1 and 256 "
                       "streams")  # fmt: skip
    p.add_argument("--seconds", type=_positive_float, default=10.0)
    _common(p)
    p = sub.add_parser("bus", help="two replicas on private PostgreSQL + Redis: re-attach "
                       "latency through Redis against in-process, fan-out over both")  # fmt: skip
    p.add_argument("--runs", type=_positive_int, default=60)
    p.add_argument("--subscribers", type=_positive_int, default=1000)
    p.add_argument("--tokens", type=_positive_int, default=300)
    _common(p)
    return root


def run_options(args: argparse.Namespace) -> RunOptions:
    requests = args.requests
    if requests is None and args.duration is None:
        requests = 100
    load = LoadSpec(args.concurrency, args.rate, requests, args.duration, args.timeout, args.seed)
    workload = Workload(
        model=args.model or "oxiserve-sim",
        prompt_tokens=args.prompt_tokens,
        max_tokens=args.max_tokens,
        include_usage=args.usage,
        seed=args.seed,
        api_key=args.api_key,
        sim_error=args.sim_error,
        sim_error_every=args.sim_error_every,
        subscribers=args.subscribers,
    )
    extra: tuple[str, ...] = tuple(args.server_arg)
    if args.server == OXISERVE.key:
        sim = oxiserve_args(
            sim_ttft_ms=args.sim_ttft_ms,
            sim_itl_ms=args.sim_itl_ms,
            sim_failure_rate=args.sim_failure_rate,
            sim_failure_types=args.sim_failure_types,
        )
        extra = sim + extra
    elif args.burst:
        extra = ("--burst", *extra)
    if args.server_loop:
        extra = ("--loop", args.server_loop, *extra)
    return RunOptions(
        scenario=args.scenario,
        url=args.url,
        server=args.server,
        server_args=extra,
        load=load,
        workload=workload,
        discover_model=args.model is None,
        results_dir=args.results_dir,
        plot=args.plot,
    )


async def _run(args: argparse.Namespace) -> int:
    opts = run_options(args)
    pinning = Pinning.plan(args.pin)
    pinning.pin_client()
    report = await run_benchmark(opts, pinning)
    print(report.text)
    return 1 if report.unavailable else 0


def _context(kind: str, pinning: Pinning, burst: bool = False) -> dict[str, Any]:
    loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
    return envelope(kind) | {"pinning": pinning.note, "client_loop": loop, "burst": burst}


def _run_doc(loop: str, results: list[ServerResult], sizes: Sizes) -> dict[str, Any]:
    return {
        "loop": loop,
        "servers": {r.spec.key: r.to_dict() for r in results},
        "goals": goal_lines(results, sizes),
    }


async def _compare_loops(
    args: argparse.Namespace,
    sizes: Sizes,
    pinning: Pinning,
    *,
    loads: bool,
    footprint: bool,
    burst: bool = False,
) -> dict[str, list[ServerResult]]:
    """One comparison per server loop, in the order asked."""
    runs = {}
    for loop in args.loops or installed_loops():
        print(f"-- every server on the {loop} loop --", file=sys.stderr, flush=True)
        runs[loop] = await compare(
            default_servers(args.servers),
            sizes,
            pinning=pinning,
            burst=burst,
            loads=loads,
            footprint=footprint,
            loop=loop,
        )
    return runs


def _failed(runs: dict[str, list[ServerResult]]) -> bool:
    return any(r.failure for run in runs.values() for r in run)


async def _compare(args: argparse.Namespace) -> int:
    sizes = QUICK if args.quick else FULL
    if args.duration:
        sizes = replace(sizes, duration=args.duration)
    pinning = Pinning.plan(args.pin)
    pinning.pin_client()
    started = time.perf_counter()
    runs = await _compare_loops(
        args, sizes, pinning, loads=True, footprint=args.footprint, burst=args.burst
    )
    context = _context("compare", pinning, args.burst)
    doc = context | {
        "quick": args.quick,
        "sizes": asdict(sizes),
        "runs": [_run_doc(loop, run, sizes) for loop, run in runs.items()],
        "elapsed_s": time.perf_counter() - started,
    }
    path = write_result(doc, "compare", args.results_dir)
    print(render_terminal(list(runs.values()), sizes, context))
    print("\nMarkdown (for the README):\n")
    print(render_markdown(list(runs.values()), sizes, context))
    print(f"\nresult: {path} ({doc['elapsed_s']:.0f} s)")
    return 1 if _failed(runs) else 0


async def _footprint(args: argparse.Namespace) -> int:
    sizes: Sizes = QUICK if args.quick else FULL
    pinning = Pinning.plan(args.pin)
    pinning.pin_client()
    runs = await _compare_loops(args, sizes, pinning, loads=False, footprint=True)
    context = _context("footprint", pinning)
    doc = context | {
        "sizes": asdict(sizes),
        "runs": [_run_doc(loop, run, sizes) for loop, run in runs.items()],
    }
    path = write_result(doc, "footprint", args.results_dir)
    print(render_terminal(list(runs.values()), sizes, context))
    print(f"\nresult: {path}")
    return 1 if _failed(runs) else 0


async def _engine(args: argparse.Namespace) -> int:
    from bench import engine_overhead

    pinning = Pinning.plan(args.pin)
    pinning.pin_client()
    results = await engine_overhead.measure(args.seconds, pinning)
    _report(args, pinning, "engine", engine_overhead.to_json(results),
            engine_overhead.render(results), {
                "oxiserve delivers >= 95% of the engine's own rate":
                    all(r.ratio >= 0.95 for r in results),
                ">= 95% of the server's CPU a token is the engine's":
                    all((r.cpu_ratio or 0) >= 0.95 for r in results),
            })  # fmt: skip
    return 0


def _report(args: argparse.Namespace, pinning: Pinning, kind: str, results: Any, table: str,
            goals: dict[str, bool]) -> None:  # fmt: skip
    """Write a measurement's result file; print its table, its goals and the file."""
    doc = envelope(kind) | {"pinning": pinning.describe(True), "results": results}
    path = write_result(doc, kind, args.results_dir)
    print(table)
    print()
    for goal, met in goals.items():
        print(f"{'PASS' if met else 'FAIL'}  {goal}")
    print(f"result: {path}")


async def _sim_cost(args: argparse.Namespace) -> int:
    from bench import sim_cost

    pinning = Pinning.plan(args.pin)
    pinning.pin_client()
    results = await sim_cost.measure(args.seconds, pinning)
    goal = f"under {sim_cost.GOAL_US:g} µs of server CPU a token"
    _report(args, pinning, "sim-cost", sim_cost.to_json(results), sim_cost.render(results),
            {goal: all(r.met for r in results)})  # fmt: skip
    return 0


async def _bus(args: argparse.Namespace) -> int:
    from bench import bus

    why = bus.unavailable()
    if why is not None:
        print(f"bus: skipped ({why})")
        return 0
    pinning = Pinning.plan(False)
    results = {"workers": await bus.workers()}
    results |= await bus.measure(args.runs, args.subscribers, args.tokens)
    _report(args, pinning, "bus", results, bus.render(results),
            {"every subscriber got every delta": results["fanout"]["complete"]})  # fmt: skip
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], Coroutine[Any, Any, int]]] = {
    "run": _run,
    "compare": _compare,
    "footprint": _footprint,
    "engine": _engine,
    "sim-cost": _sim_cost,
    "bus": _bus,
}


def run_on_loop(choice: str, main: Coroutine[Any, Any, int]) -> int:
    """Run ``main`` on uvloop (the cheaper client) when chosen or available, else asyncio."""
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                main.close()
                raise SystemExit("uvloop is not installed (pip install uvloop)") from None
        else:
            return uvloop.run(main)
    return asyncio.run(main)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return run_on_loop(args.loop, COMMANDS[args.command](args))
    except ServerStartError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
