"""The ``hpod`` command line.

    hpod demo                                  # a real study end to end on this machine
    hpod local --workers 2                     # embedded Redis + server + workers; Ctrl-C stops
    hpod server --port 50051 --redis-url redis://host:6379/0
    hpod worker --redis-url ... --trainer mlp --checkpoint-dir /shared/ckpt
    hpod redis-acl NAME --apply --redis-url ADMIN_URL   # a worker pool's own Redis user
    hpod study create spec.yaml [--watch] | watch ID | show ID | best ID | list | stop ID
    hpod study raise-max-resource ID
    hpod study pareto ID [--json] [--plot DIR]   # cost/value front and scaling fits (carbs)
    hpod plan --algorithm hyperband --max-resource 81 --eta 3 [--min-resource 1] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from . import pareto  # stdlib-only at import: keeps `hpod` startup light

DEFAULT_ADDRESS = os.environ.get("HPOD_ADDRESS", "127.0.0.1:50051")
DEFAULT_REDIS = os.environ.get("HPOD_REDIS_URL", "redis://127.0.0.1:6379/0")


def _setting(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="hpod", description="Hyperparameter optimization service")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("server", help="run the gRPC server")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=50051)
    p.add_argument("--redis-url", default=DEFAULT_REDIS)
    p.add_argument("--lease-seconds", type=float, default=10.0,
                   help="a job whose worker is silent this long is handed to another worker")
    p.add_argument("--handoff-seconds", type=float,
                   default=float(os.environ.get("HPOD_HANDOFF_SECONDS", "1.0")),
                   help="how long a trial's next segment waits for the idle worker that holds "
                        "its model before any worker may take it from the checkpoint "
                        "(0: no affinity)")
    from hpod.server.options import add_arguments as add_server_options

    add_server_options(p)  # TLS, tokens, limits, metrics, log format (issue 8)

    p = sub.add_parser("worker", help="run a trainer worker")
    p.add_argument("--redis-url", default=DEFAULT_REDIS)
    p.add_argument("--log-format", choices=("text", "json"),
                   default=os.environ.get("HPOD_LOG_FORMAT", "text"))
    p.add_argument("--trainer", action="append", help="trainer name (repeatable; default all)")
    p.add_argument("--checkpoint-dir", default=os.environ.get("HPOD_CHECKPOINT_DIR",
                                                              "./hpod-checkpoints"))
    p.add_argument("--data-dir", default=os.environ.get("HPOD_DATA_DIR"))
    p.add_argument("--lease-seconds", type=float, default=10.0)
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's own choice)")
    p.add_argument("--slots", type=int, default=1,
                   help="jobs run at once in this process, one per thread, each its own worker "
                        "to the server: for models far too small to fill the device")
    p.add_argument("--keep-models", type=int,
                   default=int(os.environ.get("HPOD_KEEP_MODELS", "1")),
                   help="models kept in memory after their segment (the N most recent), to "
                        "continue from when the server hands this worker the same trial's next "
                        "segment instead of reading the checkpoint (0: keep none)")
    p.add_argument("--max-jobs", type=int, default=None, help=argparse.SUPPRESS)

    for name, helptext in (("local", "embedded Redis + server + workers in the foreground"),
                           ("demo", "run a Hyperband study on the digits MLP end to end")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--workers", type=int, default=2)
        p.add_argument("--port", type=int, default=None if name == "demo" else 50051)
        p.add_argument("--redis-url", default=None, help="use this Redis instead of embedding one")
        p.add_argument("--workdir", default=None)
        p.add_argument("--data-dir", default=None)
        if name == "local":
            p.add_argument("--optuna-storage", default=None,
                           help="the server mirrors every study live into this Optuna storage")
        if name == "demo":
            p.add_argument("--max-resource", type=float, default=27)
            p.add_argument("--eta", type=int, default=3)
            p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("plan", help="print an algorithm's plan (no server needed)")
    p.add_argument("--algorithm", default="hyperband")
    p.add_argument("--max-resource", type=float, required=True)
    p.add_argument("--min-resource", type=float, default=1.0)
    p.add_argument("--eta", type=int, default=3)
    p.add_argument("--max-trials", type=int, default=None)
    p.add_argument("--setting", type=_setting, action="append", default=[],
                   help="algorithm setting KEY=VALUE (repeatable)")
    p.add_argument("--json", action="store_true")

    study = sub.add_parser("study", help="manage studies on a server")
    ssub = study.add_subparsers(dest="study_command", required=True)
    for name in ("create", "watch", "show", "best", "list", "stop", "raise-max-resource"):
        sp = ssub.add_parser(name)
        sp.add_argument("--address", default=DEFAULT_ADDRESS)
        if name == "create":
            sp.add_argument("spec", help="YAML or JSON study spec")
            sp.add_argument("--watch", action="store_true", help="follow it until it ends")
        elif name != "list":
            sp.add_argument("study_id")
        if name in ("show", "best", "list"):
            sp.add_argument("--json", action="store_true")
    _add_ecosystem_parsers(ssub)
    pareto.add_parser(ssub, DEFAULT_ADDRESS)
    _add_simulate_parser(sub)
    _add_redis_acl_parser(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(COMMANDS[args.command](args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a clear one-line error, not a traceback, for known failures
        from .sdk import HpodError
        from .spec import SpecError

        if isinstance(e, (HpodError, SpecError)):
            print(f"hpod: {e}", file=sys.stderr)
            return 2
        raise


# ---------------------------------------------------------------- processes


def cmd_server(args: argparse.Namespace) -> int:
    from hpod.server.main import run
    from hpod.server.manager import Settings
    from hpod.server.options import from_arguments

    run(f"{args.host}:{args.port}", Settings(redis_url=args.redis_url,
                                             lease_seconds=args.lease_seconds,
                                             handoff_seconds=args.handoff_seconds),
        from_arguments(args))
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from hpod.trainers.base import load_all
    from hpod.trainers.worker import main as worker_main

    trainers = args.trainer or sorted(load_all())
    worker_main(args.redis_url, trainers, args.checkpoint_dir, args.data_dir,
                args.lease_seconds, args.max_jobs, args.threads, args.log_format, args.slots,
                args.keep_models)
    return 0


def cmd_local(args: argparse.Namespace) -> int:
    from .local import LocalCluster

    mirror = ("--optuna-storage", args.optuna_storage) if args.optuna_storage else ()
    cluster = LocalCluster(workers=args.workers, port=args.port, redis_url=args.redis_url,
                           workdir=args.workdir, data_dir=args.data_dir, quiet=False,
                           server_args=mirror)
    with cluster:
        print(f"hpod local: server {cluster.address}, redis {cluster.redis_url}, "
              f"{args.workers} workers; Ctrl-C stops all", flush=True)
        try:
            while cluster.server and cluster.server.poll() is None:
                time.sleep(0.5)
        except KeyboardInterrupt:
            print("stopping...", flush=True)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .local import LocalCluster

    spec = {
        "name": "demo: dropout MLP on digits",
        "trainer": "mlp",
        "objective": {"metric": "val_error", "direction": "minimize"},
        "resource": {"name": "epoch", "max_resource": args.max_resource, "eta": args.eta},
        "algorithm": {"name": "hyperband"},
        "seed": args.seed,
    }
    started = time.time()
    with LocalCluster(workers=args.workers, port=args.port, redis_url=args.redis_url,
                      workdir=args.workdir, data_dir=args.data_dir) as cluster:
        print(f"hpod demo: embedded Redis {cluster.redis_url}, server {cluster.address}, "
              f"{args.workers} workers", flush=True)
        with cluster.client() as client:
            study = client.create_study(spec)
            _print_plan(study.info.plan, study.info.spec.resource.name)
            study.wait(progress=True)
            _print_trials(study, top=10)
    print(f"demo finished in {time.time() - started:.1f} s")
    return 0


# ---------------------------------------------------------------- plan


def cmd_plan(args: argparse.Namespace) -> int:
    from hpod.server.algorithms import Context, Resource, SearchSpace, build
    from hpod.server.algorithms.space import Float

    ctx = Context(SearchSpace((Float("x", 0.0, 1.0),)),
                  Resource(args.max_resource, args.min_resource, args.eta), seed=0,
                  settings=dict(args.setting), max_trials=args.max_trials)
    try:
        plan = build(args.algorithm, ctx).plan()
    except ValueError as e:
        print(f"hpod plan: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(plan.to_dict()))
        return 0
    from .progress import Console

    console = Console()
    for b in plan.brackets:
        rungs = "  ".join(f"{r.n}@{r.r:g}" for r in b.rungs)
        console.print(f"bracket s={b.s}: {rungs}   (budget {b.budget:g})", highlight=False)
    console.print(f"total resource {plan.total_resource:g}"
                  + (f", {plan.incremental_resource:g} with checkpoint resume"
                     if plan.incremental_resource else ""), highlight=False)
    return 0


def _print_plan(plan: Any, unit: str) -> None:
    for b in plan.brackets:
        print(f"  bracket s={b.s}: " + "  ".join(f"{r.n}@{r.r:g}" for r in b.rungs))
    if plan.total_resource:
        print(f"  {plan.incremental_resource:g} {unit}s to train with checkpoint resume "
              f"({plan.total_resource:g} if every rung retrained from scratch)")


# ---------------------------------------------------------------- studies


def _client(args: argparse.Namespace) -> Any:
    from .sdk import Client

    client = Client(args.address)
    client.wait_ready(10)
    return client


def _print_trials(study: Any, top: int | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    trials = [t for t in study.trials(curves=False) if t.value is not None]
    maximize = study.info.spec.objective.direction == 2
    # Furthest-trained first: a value at 3 epochs does not compete with one at 27.
    trials.sort(key=lambda t: (-t.resource, -t.value if maximize else t.value, t.id))
    best = study.best_trial()
    table = Table(title=f"study {study.id}: best trials "
                  f"({study.info.spec.objective.metric or 'value'}, "
                  f"{'max' if maximize else 'min'}imized)")
    for col in ("trial", "value", study.info.spec.resource.name or "resource", "state",
                "bracket", "cost s", "config"):
        table.add_column(col)
    for t in trials[:top]:
        mark = " *" if best is not None and t.id == best.id else ""
        cfg = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in t.config.items())
        table.add_row(f"{t.id}{mark}", f"{t.value:.4f}", f"{t.resource:g}", t.state,
                      str(t.bracket), f"{t.cost:.2f}", cfg)
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # logs and pipes: one row per trial, no wrapping
    console.print(table)
    if best is not None:
        print(f"best trial (algorithm's rule): {best.id} value {best.value:.4f}")


def cmd_study(args: argparse.Namespace) -> int:
    from .spec import load_spec_file

    client = _client(args)
    sc = args.study_command
    if sc == "create":
        study = client.create_study(load_spec_file(args.spec))
        print(study.id)
        if args.watch:
            study.wait(progress=True)
            _print_trials(study, top=10)
        return 0
    if sc == "list":
        studies = client.list_studies()
        if args.json:
            from google.protobuf import json_format

            print(json.dumps([json_format.MessageToDict(s) for s in studies]))
        for s in studies if not args.json else []:
            print(f"{s.id}  {s.spec.name or '-':30}  {s.spec.algorithm.name:12} "
                  f"{STATE_NAMES.get(s.state, s.state):10} {s.trials_finished}/{s.trials_total}")
        return 0
    study = client.study(args.study_id)
    if sc in STUDY_ECOSYSTEM:
        return STUDY_ECOSYSTEM[sc](study, args)
    if sc == "watch":
        study.wait(progress=True)
        _print_trials(study, top=10)
    elif sc == "show":
        if args.json:
            from google.protobuf import json_format

            print(json_format.MessageToJson(study.info))
        else:
            _print_trials(study)
    elif sc == "best":
        best = study.best_trial()
        if best is None:
            print("no trial has a result yet")
            return 1
        out = {"trial": best.id, "value": best.value, "resource": best.resource,
               "config": best.config}
        print(json.dumps(out) if args.json else
              f"trial {best.id} value {best.value:.6g} at {best.resource:g}: {best.config}")
    elif sc == "stop":
        study.stop()
        print(f"stopped {study.id}")
    elif sc == "raise-max-resource":
        study.raise_max_resource()
        print(f"{study.id}: max resource now {study.info.spec.resource.max_resource:g}")
    return 0


STATE_NAMES = {1: "active", 2: "completed", 3: "stopped"}

COMMANDS = {"server": cmd_server, "worker": cmd_worker, "local": cmd_local, "demo": cmd_demo,
            "plan": cmd_plan, "study": cmd_study}



# ---------------------------------------------------------------- simulate (issue 7)


def _add_simulate_parser(sub: Any) -> None:
    p = sub.add_parser("simulate", help="run a study on a simulated cluster (no server)")
    p.add_argument("--problem", default="branin-curve",
                   help="branin-curve, branin-mf, hartmann6-mf or module:attribute")
    p.add_argument("--algorithm", default="hyperband")
    p.add_argument("--workers", type=int, default=16)
    p.add_argument("--max-trials", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-resource", type=float, default=None)
    p.add_argument("--min-resource", type=float, default=None)
    p.add_argument("--eta", type=int, default=None)
    p.add_argument("--setting", type=_setting, action="append", default=[],
                   help="algorithm setting KEY=VALUE (repeatable)")
    p.add_argument("--trace", action="store_true", help="with --json: include the trace")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("bench", help="benchmarks from a source checkout (bench/)",
                       add_help=False)
    p.add_argument("bench_args", nargs=argparse.REMAINDER,
                   help="compare|trainers [options]: see `hpod bench compare --help`")


def cmd_simulate(args: argparse.Namespace) -> int:
    from hpod.server.simulator import simulate

    try:
        res = simulate(args.problem, args.algorithm, args.workers, args.max_trials, args.seed,
                       dict(args.setting), args.max_resource, args.min_resource, args.eta)
    except ValueError as e:  # SettingsError, SpaceError and unknown problems are ValueErrors
        print(f"hpod simulate: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(res.to_dict(with_trace=args.trace)))
        return 0
    best = "-" if res.best_value is None else f"{res.best_value:.6g} (trial {res.best_trial})"
    regret = "" if res.regret is None else f", regret {res.regret:.4g}"
    print(f"{res.algorithm} on {res.problem}: {res.trials} trials, {res.jobs} jobs, "
          f"{res.workers} workers, study {res.study_state}")
    print(f"  best {best}{regret}")
    print(f"  simulated {res.simulated_seconds / 3600:.2f} h, utilisation "
          f"{res.utilisation:.1%}, resource used {res.resource_used:g}")
    print(f"  utilisation {res.utilisation_before_drain:.1%} until the last new trial started "
          f"({res.drain_start / 3600:.2f} h), then a drain of {res.drain_seconds / 3600:.2f} h"
          + (f"; maximum resource raised {res.raises} time(s)" if res.raises else ""))
    print(f"  {res.events} events in {res.wall_seconds:.2f} s: engine "
          f"{res.overhead_us_per_event:.1f} us/event, simulator "
          f"{res.simulator_us_per_event:.1f} us/event")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Runs bench/<name>.py of the source checkout this package is installed from (the
    benchmarks are scripts, not part of the installed package)."""
    import runpy
    from pathlib import Path

    import hpod.server

    rest = list(args.bench_args)
    names = {"compare": "compare.py", "trainers": "trainers.py"}
    if not rest or rest[0] not in names:
        print(f"usage: hpod bench {{{','.join(names)}}} [options]", file=sys.stderr)
        return 2
    script = Path(hpod.server.__path__[0]).parent / "bench" / names[rest[0]]
    if not script.exists():
        print(f"hpod bench: {script} not found; run it from a source checkout "
              "(pip install -e .)", file=sys.stderr)
        return 2
    module = runpy.run_path(str(script), run_name="hpod_bench")
    return int(module["main"](rest[1:]) or 0)


COMMANDS["simulate"] = cmd_simulate
COMMANDS["bench"] = cmd_bench


# ---------------------------------------------------------------- Optuna export, plots (issue 9)


def _add_ecosystem_parsers(ssub: Any) -> None:
    sp = ssub.add_parser("export", help="write the study's trials into an Optuna storage")
    sp.add_argument("study_id")
    sp.add_argument("--address", default=DEFAULT_ADDRESS)
    sp.add_argument("--optuna-storage", required=True, help="an RDB URL (sqlite:///hpod.db) "
                    "or a journal file path (journal:PATH or any path without ://)")
    sp.add_argument("--follow", action="store_true",
                    help="mirror live, as trials change, until the study ends")
    sp = ssub.add_parser("plot", help="PNG plots of the study")
    sp.add_argument("study_id")
    sp.add_argument("--address", default=DEFAULT_ADDRESS)
    sp.add_argument("--out", required=True, help="directory for the PNG files")
    sp.add_argument("--optuna-storage", default=None,
                    help="a live mirror's storage: gives the plots against wall time")


def cmd_study_export(study: Any, args: argparse.Namespace) -> int:
    from .optuna_export import export_study

    def show(ev: Any) -> None:
        if ev.kind not in ("progress", "study_ended"):
            print(f"[{ev.kind}] trial {ev.trial_id}", flush=True)

    mirror = export_study(study, args.optuna_storage, follow=args.follow, on_event=show)
    print(f"study {study.id}: {len(mirror.trials)} trials in Optuna study {mirror.name!r} "
          f"at {args.optuna_storage}")
    return 0


def cmd_study_plot(study: Any, args: argparse.Namespace) -> int:
    for path in study.plot(args.out, args.optuna_storage):
        print(path)
    return 0


STUDY_ECOSYSTEM = {"export": cmd_study_export, "plot": cmd_study_plot,
                   "pareto": pareto.cmd_study_pareto}

# ---------------------------------------------------------------- worker Redis users (issue 8)


def _add_redis_acl_parser(sub: Any) -> None:
    p = sub.add_parser("redis-acl", help="print or create the Redis ACL user a worker "
                       "authenticates as (the job protocol and nothing else)")
    p.add_argument("name", nargs="?", default="hpod-worker", help="Redis user name (one per "
                   "worker pool, so each can be revoked alone; default hpod-worker)")
    p.add_argument("--redis-url", default=DEFAULT_REDIS, help="the server's (admin) URL: "
                   "with --apply the connection that creates the user; the worker URL printed "
                   "keeps its scheme, host, port and database")
    p.add_argument("--apply", action="store_true", help="run ACL SETUSER on --redis-url "
                   "(otherwise only print it)")
    p.add_argument("--password", default=None, help="default: a new random one")
    p.add_argument("--trainer", action="append", default=None,
                   help="allow only these trainers' job streams (repeatable; default all)")
    p.add_argument("--redis-version", type=int, choices=(6, 7), default=None,
                   help="7: one selector per kind of key; 6: flat rules, see deploy/README.md "
                   "(default: the server's with --apply, else 7)")
    p.add_argument("--config", action="store_true", help="print a redis.conf/aclfile "
                   "'user' line instead of ACL SETUSER")
    p.add_argument("--json", action="store_true")


def cmd_redis_acl(args: argparse.Namespace) -> int:
    from hpod.server.store import acl

    password = args.password or acl.new_password()
    major = args.redis_version
    admin = None
    if args.apply:
        import redis

        admin = redis.Redis.from_url(args.redis_url, decode_responses=True)
        try:
            major = major or acl.redis_major_version(admin)
        except redis.RedisError as e:
            print(f"hpod redis-acl: {type(e).__name__}: {e}", file=sys.stderr)
            return 2
    major = major or 7
    if major < 6:
        print(f"hpod redis-acl: Redis {major} has no ACL users", file=sys.stderr)
        return 2
    rules = acl.acl_rules(acl.hash_password(password), major, args.trainer,
                          select=acl.url_db(args.redis_url) != 0)
    url = acl.worker_url(args.redis_url, args.name, password)
    if admin is not None:
        try:
            admin.execute_command("ACL", "SETUSER", args.name, *rules)
        except redis.RedisError as e:
            print(f"hpod redis-acl: {type(e).__name__}: {e}", file=sys.stderr)
            return 2
    if args.json:
        print(json.dumps({"user": args.name, "password": password, "url": url,
                          "redis_version": major, "rules": rules, "applied": args.apply}))
        return 0
    words = ["user" if args.config else "ACL SETUSER", args.name, *rules]
    print(f"# Redis {major} ACL user {args.name!r} for hpod workers"
          + (" (created)" if args.apply else ""))
    print(" ".join(acl.quote_arg(w) if i > 1 else w for i, w in enumerate(words)))
    if args.apply:
        print("# a user made with ACL SETUSER is lost when Redis restarts unless it is saved "
              "(ACL SAVE with an aclfile, or CONFIG REWRITE)")
    print("# the worker's HPOD_REDIS_URL (a secret):")
    print(url)
    return 0


COMMANDS["redis-acl"] = cmd_redis_acl

if __name__ == "__main__":
    sys.exit(main())
