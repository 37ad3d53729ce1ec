"""Serving benchmark: Recommend over gRPC on loopback, load generator in its own
process, our stack against the ceiling of Python gRPC and the seeds' path.

Targets, each measured as the largest arrival rate (from a ladder) at which a
run has p99 <= --p99-ms and no failed or dropped requests:
  ours-miss   query + index services, mostly distinct customers (cache misses)
  ours-hit    the same services, a few warmed customers (cache hits, served by the
              query service's in-process tier)
  ours-hit-redis  the same with the in-process tier off (every hit is a Redis MGET)
  echo        a bare grpc.aio QueryService returning a canned response
  seeds       the TFRS ScaNN layer (defaults) + tower SavedModel, one call per request

    python -m bench.serving_throughput [--quick] [--out FILE]

Prints JSON (stdout or --out) and a table on stderr.
"""

from __future__ import annotations

import argparse
import json
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import cpu_seconds, loadtest_report
from model_registry import Registry
from tests.processes import RedisProcess, ServiceProcess, console_script, start_all

HERE = Path(__file__).resolve().parent
MODEL = "bench"


def sh(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, check=True, capture_output=True, text=True, **kwargs)


def train(registry: Path, customers: int, candidates: int, interactions: int) -> Path:
    sh([console_script("recsys-train"), "--dataset", "synthetic", "--registry", str(registry), "--model", MODEL,
        "--synthetic-customers", str(customers), "--synthetic-candidates", str(candidates),
        "--synthetic-interactions", str(interactions), "--epochs", "1", "--tune-budget-s", "0", "--quiet"],
       timeout=1800)
    return Registry(registry, MODEL).version_dir(1)


def load(address: str, qps: int, duration_s: float, customers: int, out: Path, seed: int, channels: int = 4,
         concurrency: int = 2000) -> dict:
    """One open-loop run of recsys-loadtest in its own process, over ``channels``
    connections, at most ``concurrency`` calls in flight. Each run needs its own
    ``seed``: the same seed draws the same customers, whose results the previous
    run left in the cache."""
    out.unlink(missing_ok=True)  # a run that writes no report must not be read from an earlier run's file
    run = subprocess.run([console_script("recsys-loadtest"), "--address", address, "--qps", str(qps),
                          "--duration-s", str(duration_s), "--num-customers", str(customers), "--channels",
                          str(channels), "--seed", str(seed),
                          "--concurrency", str(concurrency), "--timeout-s", "2", "--out", str(out)],
                         capture_output=True, text=True, timeout=duration_s + 120)
    return loadtest_report(out, run.returncode, run.stderr)


def summary(report: dict, cpu_s: float) -> dict:
    lat, requests = report["latency_ms"], report["requests"]
    return {"qps": int(report["offered_qps"]), "achieved_qps": report["achieved_qps"], "p50_ms": lat["p50_ms"],
            "p99_ms": lat["p99_ms"], "errors": requests["errors"], "dropped": requests["dropped"],
            "cache_hits": report["cache_hits"], "ok": requests["ok"],
            "server_cpu_us_per_request": round(cpu_s * 1e6 / requests["ok"], 1) if requests["ok"] else None}


def max_sustainable(address: str, ladder: list[int], duration_s: float, customers: int, p99_ms: float,
                    work: Path, name: str, server_pids: list[int], channels: int = 4, warmup_s: float = 2.0) -> dict:
    """Climbs the ladder, after ``warmup_s`` of calls at 50/s, until a step
    fails or drops a request or answers under 95% of its rate; the fastest step
    whose p99 was within ``p99_ms`` is the maximum sustainable rate. Each step
    also reports the CPU the server processes (``server_pids``) spent per
    answered request."""
    load(address, 50, warmup_s, customers, work / f"{name}-warmup.json", seed=1,  # connections, first tower calls
         channels=channels)
    steps, best = [], None
    for qps in ladder:
        cpu_before = cpu_seconds(server_pids)
        report = load(address, qps, duration_s, customers, work / f"{name}-{qps}.json", seed=1000 + qps,
                      channels=channels)
        step = summary(report, cpu_seconds(server_pids) - cpu_before)
        steps.append(step)
        print(f"  {name:10s} {qps:6d} qps: p99 {step['p99_ms']} ms, achieved {step['achieved_qps']:.0f}, "
              f"errors {step['errors']}, dropped {step['dropped']}, hits {step['cache_hits']}, "
              f"server cpu {step['server_cpu_us_per_request']} us/request", file=sys.stderr)
        if step["errors"] or step["dropped"] or step["achieved_qps"] < 0.95 * qps:
            break  # saturated: past here neither target can be met
        if step["p99_ms"] is not None and step["p99_ms"] <= p99_ms:
            best = step  # a noisy step may miss p99 and a faster one pass: keep the fastest that passed
    return {"max_sustainable_qps": best["qps"] if best else 0, "at_max": best,
            "max_throughput_qps": max(s["achieved_qps"] for s in steps), "steps": steps,
            "server_cpu_us_per_request": _steady_cpu(steps)}


def _steady_cpu(steps: list[dict]) -> float | None:
    """Server CPU per request over the steps that kept up with their rate (a
    saturated step's queueing and failures would distort it), request-weighted."""
    kept = [s for s in steps if s["server_cpu_us_per_request"] is not None and not s["errors"]
            and not s["dropped"] and s["achieved_qps"] >= 0.95 * s["qps"]]
    if not kept:
        return None
    return round(sum(s["server_cpu_us_per_request"] * s["ok"] for s in kept) / sum(s["ok"] for s in kept), 1)


def stop_all(*processes: ServiceProcess | RedisProcess | None) -> None:
    """Stops each of ``processes`` still running (None: not created yet)."""
    for process in processes:
        if process is not None:
            process.stop()


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    """The model trained for the stack (shared with bench.workers and bench.request_cost)."""
    parser.add_argument("--customers", type=int, default=50_000)
    parser.add_argument("--candidates", type=int, default=5_000)
    parser.add_argument("--interactions", type=int, default=500_000)


def add_stack_flags(parser: argparse.ArgumentParser) -> None:
    """The model trained for the stack and how each ladder step is judged (shared with bench.workers)."""
    parser.add_argument("--p99-ms", type=float, default=10.0)
    parser.add_argument("--duration-s", type=float, default=6.0, help="length of each ladder step")
    add_model_flags(parser)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny model, one short step (smoke test)")
    add_stack_flags(parser)
    parser.add_argument("--ladder", default="100,200,300,400,500,600,800,1000,1250,1500,2000,2500,3000,4000")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.customers, args.candidates, args.interactions = 300, 200, 6000
        args.ladder, args.duration_s = "100", 1.0
    ladder = [int(q) for q in args.ladder.split(",")]
    # A smoke test's warm-up needs only the connections up and the first tower calls made: a few calls do that.
    warmup_s = 0.5 if args.quick else 2.0

    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        version_dir = train(work / "registry", args.customers, args.candidates, args.interactions)
        common = ["--registry", str(work / "registry"), "--model", MODEL, "--version", "1"]
        redis = RedisProcess().start()
        cache_key = work / "cache.key"  # both query replicas below read what the other wrote to Redis
        cache_key.write_text(secrets.token_hex(32))
        cache = ["--redis-url", redis.url, "--cache-key-file", str(cache_key)]
        # The seeds' export runs while the stack starts (both mostly TensorFlow's import), and ends before any load.
        export_log = work / "seeds-build.log"
        with open(export_log, "wb") as log:
            export = subprocess.Popen([sys.executable, str(HERE / "seeds_server.py"), "--build", str(version_dir),
                                       "--out", str(work / "seeds")], stdout=log, stderr=subprocess.STDOUT)
        baselines = {name: ServiceProcess(name, [], work / f"{name}.log") for name in ("echo", "seeds")}
        for name, command in (("echo", [sys.executable, str(HERE / "echo_server.py")]),
                              ("seeds", [sys.executable, str(HERE / "seeds_server.py"), "--model",
                                         str(work / "seeds")])):
            baselines[name].command = [*command, "--port", str(baselines[name].port)]
        index = query = redis_only = None
        results: dict = {}
        try:
            index = ServiceProcess("recsys-index-service", [*common, "--slot", "blue"], work / "index.log")
            query = ServiceProcess("recsys-query-service", [*common, "--index-address", index.address, *cache],
                                   work / "query.log")
            redis_only = ServiceProcess("recsys-query-service", [*common, "--index-address", index.address, *cache,
                                                                 "--local-cache-mb", "0"],
                                        work / "query-redis-only.log")
            # A smoke test starts every server as early as it can, beside the others; a full run each one once the
            # servers before it have stopped, so that no other server runs beside the ones measured.
            start_all(index, query, *([redis_only, baselines["echo"]] if args.quick else []))
            if export.wait(600):
                raise RuntimeError(f"seeds_server.py --build exited {export.returncode}:\n"
                                   f"{export_log.read_text(errors='replace')[-2000:]}")
            print(f"trained, exported and started in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
            if args.quick:
                baselines["seeds"].launch()
            ours = lambda: [index.proc.pid, query.proc.pid, redis.proc.pid]  # noqa: E731
            results["ours-miss"] = max_sustainable(query.address, ladder, args.duration_s, args.customers,
                                                   args.p99_ms, work, "ours-miss", ours(), warmup_s=warmup_s)
            hot = min(100, args.customers)
            load(query.address, 200, 1.0, hot, work / "warm.json", seed=2)  # every hot customer cached
            results["ours-hit"] = max_sustainable(query.address, ladder, args.duration_s, hot, args.p99_ms,
                                                  work, "ours-hit", ours(), warmup_s=warmup_s)
            query.stop()
            query = redis_only if redis_only.proc is not None else redis_only.start()
            results["ours-hit-redis"] = max_sustainable(query.address, ladder, args.duration_s, hot, args.p99_ms,
                                                        work, "ours-hit-redis", ours(), warmup_s=warmup_s)
            stop_all(query, index, redis)
            for name, server in baselines.items():
                if server.proc is None:
                    server.launch()
                server.wait_serving()
                results[name] = max_sustainable(server.address, ladder, args.duration_s, args.customers,
                                                args.p99_ms, work, name, [server.proc.pid], warmup_s=warmup_s)
                server.stop()
        finally:
            if export.poll() is None:  # the stack failed before the export was waited for
                export.kill()
                export.wait()
            stop_all(query, redis_only, index, redis, *baselines.values())

    best = {name: r["max_sustainable_qps"] for name, r in results.items()}
    ratio = lambda a, b: round(best[a] / best[b], 2) if best[b] else None  # noqa: E731
    cpu = {name: r["server_cpu_us_per_request"] for name, r in results.items()}
    cpu_ratio = lambda a: round(cpu[a] / cpu["echo"], 2) if cpu[a] and cpu["echo"] else None  # noqa: E731
    report = {
        "config": {k: v for k, v in vars(args).items() if k != "out"} | {"out": str(args.out) if args.out else None},
        "max_sustainable_qps": best,
        "ratios": {"miss_vs_echo": ratio("ours-miss", "echo"), "hit_vs_echo": ratio("ours-hit", "echo"),
                   "miss_vs_seeds": ratio("ours-miss", "seeds")},
        "server_cpu_us_per_request": cpu,
        "cpu_ratios": {"miss_vs_echo": cpu_ratio("ours-miss"), "hit_vs_echo": cpu_ratio("ours-hit")},
        "results": results,
    }
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text)
    else:
        print(text)
    print("\nmax sustainable QPS (p99 <= %.0f ms):" % args.p99_ms, file=sys.stderr)
    for name, qps in best.items():
        print(f"  {name:10s} {qps:6d}", file=sys.stderr)
    print(f"  ratios: {report['ratios']}", file=sys.stderr)
    print(f"server CPU per request (us): {cpu}; vs echo: {report['cpu_ratios']}", file=sys.stderr)


if __name__ == "__main__":
    main()
