"""The ``hpod`` command line.

    hpod demo                                  # a real study end to end on this machine
    hpod local --workers 2                     # Redis + server + workers, data in ./.hpod
    hpod server --port 50051 --redis-url redis://host:6379/0
    hpod worker --redis-url ... --trainer mlp --checkpoint-dir /shared/ckpt
    hpod redis-acl NAME --apply --redis-url ADMIN_URL   # a worker pool's own Redis user
    hpod study create spec.yaml [--watch] | watch ID | show ID | best ID | list | stop ID
    hpod study raise-max-resource ID
    hpod study pareto ID [--json] [--plot DIR]   # cost/value front and scaling fits (carbs)
    hpod plan --algorithm hyperband --max-resource 81 --eta 3 [--min-resource 1] [--json]

Every command that prints a result takes --json; the fields and the exit codes are in
docs/cli-json.md (client/output.py makes both).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from . import output, pareto  # stdlib-only at import: keeps `hpod` startup light

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


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="hpod", description="Hyperparameter optimization service",
                                 epilog="exit codes: 0 ok, 1 the study failed (or no result), "
                                 "2 bad input or request refused, 3 no server answered, "
                                 "4 credentials refused, 5 server error, 130 interrupted; "
                                 "see docs/cli-json.md")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("server", help="run the gRPC server")
    p.add_argument("--host", default="0.0.0.0",
                   help="address to listen on (0.0.0.0: every interface; use auth off only "
                        "on 127.0.0.1)")
    p.add_argument("--port", type=int, default=50051)
    p.add_argument("--redis-url", default=DEFAULT_REDIS)
    p.add_argument("--lease-seconds", type=float, default=10.0,
                   help="a job whose worker is silent this long is handed to another worker")
    p.add_argument("--handoff-seconds", type=float,
                   default=float(os.environ.get("HPOD_HANDOFF_SECONDS", "1.0")),
                   help="how long a trial's next segment waits for the idle worker that holds "
                        "its model before any worker may take it from the checkpoint "
                        "(0: no affinity)")
    p.add_argument("--checkpoint-dir", default=os.environ.get("HPOD_CHECKPOINT_DIR", ""),
                   help="the workers' checkpoint directory, if this server can reach it (a "
                        "shared volume): an ended study's checkpoints are deleted but for its "
                        "best trials'")
    if _needs_server_options(argv):
        # Only for `hpod server`: the client commands never import the server package.
        from hpod.server.options import add_arguments as add_server_options

        add_server_options(p)  # TLS, tokens, limits, metrics, log format

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
    p.add_argument("--redis-retry-seconds", type=float,
                   default=float(os.environ.get("HPOD_REDIS_RETRY_SECONDS", "60")),
                   help="how long a worker retries Redis errors (lost connection, out of "
                        "memory, loading) before it gives its job back")
    p.add_argument("--max-jobs", type=int, default=None, help=argparse.SUPPRESS)

    _add_local_parsers(sub)

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
    helps = {"create": "create a study from a YAML or JSON spec (prints its id)",
             "watch": "follow a study until it ends (Ctrl-C stops watching, not the study)",
             "show": "a study's state, progress, errors and trials",
             "best": "the best trial (the incumbent, for a stopped study)",
             "list": "every study with its state and, if it failed, the first error",
             "stop": "stop a study (its trials stop; results are kept)",
             "raise-max-resource": "raise an ID-HB study's maximum resource"}
    for name, helptext in helps.items():
        sp = ssub.add_parser(name, help=helptext)
        sp.add_argument("--address", default=DEFAULT_ADDRESS)
        if name == "create":
            sp.add_argument("spec", help="YAML or JSON study spec")
            sp.add_argument("--watch", action="store_true", help="follow it until it ends")
        elif name != "list":
            sp.add_argument("study_id")
        sp.add_argument("--json", action="store_true", help="print JSON (docs/cli-json.md)")
    _add_ecosystem_parsers(ssub)
    pareto.add_parser(ssub, DEFAULT_ADDRESS)
    _add_simulate_parser(sub)
    _add_redis_acl_parser(sub)
    return ap


def _extra_for(args: argparse.Namespace) -> str:
    """The pip extra that brings what ``args``'s command imports."""
    if args.command in ("server", "plan", "simulate", "redis-acl", "bench"):
        return "server"
    if args.command == "worker":
        return "worker"
    if args.command in ("local", "demo"):
        return "server,worker"
    return "plots"  # study export, plot, pareto --plot: optuna and matplotlib


def _needs_server_options(argv: list[str] | None) -> bool:
    args = sys.argv[1:] if argv is None else argv
    return bool(args) and args[0] == "server"


def _add_local_parsers(sub: Any) -> None:
    for name, helptext in (("local", "embedded Redis + server + workers in the foreground; "
                                     "keeps its studies in --workdir"),
                           ("demo", "run a Hyperband study on the digits MLP end to end")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--workers", type=int, default=2)
        p.add_argument("--port", type=int, default=None if name == "demo" else 50051)
        p.add_argument("--redis-url", default=None, help="use this Redis instead of embedding one")
        p.add_argument("--data-dir", default=None)
        p.add_argument("--json", action="store_true",
                       help="print JSON (docs/cli-json.md): the cluster, then the result")
        if name == "local":
            p.add_argument("--workdir", default=os.environ.get("HPOD_LOCAL_DIR", ".hpod"),
                           help="where Redis's data, checkpoints and logs live (default "
                                "./.hpod, or $HPOD_LOCAL_DIR): run again here and every study "
                                "resumes")
            p.add_argument("--host", default="127.0.0.1",
                           help="address the server listens on (default loopback only)")
            p.add_argument("--trainer", action="append", default=None,
                           help="trainer the workers run (repeatable; default: mlp, analytic "
                                "and the trainer of every study already stored)")
            p.add_argument("--optuna-storage", default=None,
                           help="the server mirrors every study live into this Optuna storage")
        if name == "demo":
            p.add_argument("--workdir", default=None,
                           help="where its data lives (default: a new temporary folder, "
                                "deleted at the end)")
            p.add_argument("--max-resource", type=float, default=27)
            p.add_argument("--eta", type=int, default=3)
            p.add_argument("--seed", type=int, default=0)


def main(argv: list[str] | None = None) -> int:
    if os.environ.get("HPOD_PARENT_PID"):  # started by `hpod local` / `hpod demo`
        from .parent import die_with_parent

        die_with_parent()
    args = build_parser(argv).parse_args(argv)
    try:
        return int(COMMANDS[args.command](args) or 0)
    except KeyboardInterrupt:
        return output.EXIT_INTERRUPTED
    except ModuleNotFoundError as e:  # an extra this command needs is not installed
        print(f"hpod {args.command}: needs {e.name!r}, which is not installed: "
              f"pip install 'hpod[{_extra_for(args)}]'", file=sys.stderr)
        return output.EXIT_USAGE
    except BrokenPipeError:  # `hpod ... | head`: the reader left; nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return output.EXIT_OK
    except Exception as e:  # a clear one-line error, not a traceback, for known failures
        from .sdk import HpodError
        from .spec import SpecError

        if isinstance(e, HpodError):
            print(f"hpod: {output.one_line(str(e), 2000)}", file=sys.stderr)
            return output.exit_code_for(e.code.name)
        if isinstance(e, SpecError):
            print(f"hpod: {e}", file=sys.stderr)
            return output.EXIT_USAGE
        raise


# ---------------------------------------------------------------- processes


def cmd_server(args: argparse.Namespace) -> int:
    from hpod.server.main import run
    from hpod.server.manager import Settings
    from hpod.server.options import from_arguments

    run(f"{args.host}:{args.port}", Settings(redis_url=args.redis_url,
                                             lease_seconds=args.lease_seconds,
                                             handoff_seconds=args.handoff_seconds,
                                             checkpoint_dir=args.checkpoint_dir),
        from_arguments(args))
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from hpod.trainers.base import available
    from hpod.trainers.worker import main as worker_main

    os.environ["HPOD_REDIS_RETRY_SECONDS"] = str(args.redis_retry_seconds)
    trainers = args.trainer or available()
    worker_main(args.redis_url, trainers, args.checkpoint_dir, args.data_dir,
                args.lease_seconds, args.max_jobs, args.threads, args.log_format, args.slots,
                args.keep_models)
    return 0


def cmd_local(args: argparse.Namespace) -> int:
    from .local import run_local

    return run_local(args)


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
                      workdir=args.workdir, data_dir=args.data_dir,
                      cleanup=args.workdir is None) as cluster:
        if not args.json:
            print(f"hpod demo: embedded Redis {cluster.redis_url}, server {cluster.address}, "
                  f"{args.workers} workers", flush=True)
        with cluster.client() as client:
            study = client.create_study(spec)
            if not args.json:
                _print_plan(study.info.plan, study.info.spec.resource.name)
            study.wait(progress=not args.json)
            code = _report(study, args.json, top=10)
    if not args.json:
        print(f"demo finished in {time.time() - started:.1f} s")
    return code


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
        doc = plan.to_dict()  # brackets and total_resource, as the wire's Plan
        doc.update(algorithm=args.algorithm, incremental_resource=plan.incremental_resource,
                   max_trials=plan.max_trials, notes=list(plan.notes))
        output.dump(doc)
        return 0
    from rich.console import Console

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


def _trial(study: Any, t: Any) -> Any:
    from .sdk import trial_from_pb

    return trial_from_pb(t, study._int_params)


def _maximize(info: Any) -> bool:
    return info.spec.objective.direction == 2


def _best(study: Any, trials: list[Any] | None = None) -> tuple[Any, str]:
    """The algorithm's best trial, else (a stopped or failed study) the incumbent: the best of
    the furthest-trained trials; with where it came from ("algorithm", "incumbent", "none")."""
    best = study.best_trial()
    if best is not None:
        return best, "algorithm"
    trials = study.trials(curves=False) if trials is None else trials
    inc = output.incumbent(trials, _maximize(study.info))
    return inc, "incumbent" if inc is not None else "none"


def _show_doc(study: Any, trials: list[Any]) -> dict[str, Any]:
    best, _ = _best(study, trials)
    failed = [t for t in trials if t.state in ("failed", "lost")]
    first = next((t for t in sorted(failed, key=lambda t: t.id) if t.error), None)
    return {"study": output.study_json(study.info, best),
            "trials_failed": len(failed),
            "first_trial_error": None if first is None else {
                "trial": first.id, "error": output.headline(first.error)},
            "trials": [output.trial_json(t) for t in
                       output.sort_trials(trials, _maximize(study.info))],
            "fidelity": output.fidelity_json(study.info)}


def _print_header(study: Any, trials: list[Any]) -> None:
    info = study.info
    state = output.study_state(info)
    unit = info.spec.resource.name or "resource"
    planned = info.plan.incremental_resource
    done = (f"{info.resource_used:g}/{planned:g} {unit}s" if planned else
            f"{info.resource_used:g} {unit}s")
    print(f"study {info.id} ({info.spec.name or 'unnamed'}): {state.upper()}, "
          f"{info.spec.algorithm.name} on {info.spec.trainer or 'ask/tell'}, "
          f"{info.trials_finished}/{info.trials_total} trials finished, {done}, "
          f"{info.cost_used:.1f} device s")
    if info.error:
        print(f"error: {info.error}")
    summary = output.failure_summary(trials)
    if summary:
        print(summary)


def _print_trials(study: Any, trials: list[Any], top: int | None = None) -> None:
    info = study.info
    best, source = _best(study, trials)
    ranked = output.sort_trials(trials, _maximize(info))
    shown = ranked if top is None else ranked[:top]
    metric = info.spec.objective.metric or "value"
    rows = []
    for t in shown:
        mark = " *" if best is not None and t.id == best.id else ""
        rows.append([f"{t.id}{mark}", t.state, output.fmt_value(t.value), f"{t.resource:g}",
                     t.bracket, t.rung, f"{t.cost:.2f}", output.fmt_config(t.config),
                     output.one_line(output.headline(t.error), 60) if t.error else ""])
    more = f", top {len(shown)} of {len(trials)}" if len(shown) < len(trials) else ""
    output.table(["trial", "state", metric, info.spec.resource.name or "resource", "bracket",
                  "rung", "cost s", "config", "error"], rows,
                 title=f"trials, furthest-trained and best first "
                       f"({'max' if _maximize(info) else 'min'}imizing {metric}{more})")
    if best is not None:
        rule = ("algorithm's rule" if source == "algorithm" else
                "incumbent: best of the furthest-trained trials")
        print(f"best trial ({rule}): {best.id} {metric} {best.value:.4g} at "
              f"{best.resource:g}")


def _report(study: Any, as_json: bool, top: int | None = None) -> int:
    """Print the study (JSON or header + trials); exit 1 when it failed."""
    study.refresh()
    trials = study.trials(curves=False)
    if as_json:
        output.dump(_show_doc(study, trials))
    else:
        _print_header(study, trials)
        _print_trials(study, trials, top)
        _print_fidelity(study.info)
    bad = (output.study_state(study.info) in output.ENDED_BADLY or output.all_failed(trials))
    return output.EXIT_BAD_OUTCOME if bad else output.EXIT_OK


def _print_fidelity(info: Any, last: int = 10) -> None:
    """auto's trust per level, bracket weights and its latest bracket decisions."""
    doc = output.fidelity_json(info)
    if doc is None:
        return
    unit = info.spec.resource.name or "r"
    trust = "; ".join(f"{unit} {t['resource']:g} vs {t['against']:g}: rho {t['rho']:+.2f} "
                      f"({t['pairs']} pairs), with R {t['agreement']:+.2f}"
                      for t in doc["trust"]) or "no level paired yet"
    print(f"fidelity trust: {trust}")
    print("bracket weights now: " + ", ".join(
        f"start {s:g}: {w:.2f}" for s, w in zip(doc["bracket_start"], doc["bracket_weights"],
                                                strict=True)))
    decisions = doc["decisions"][-last:]
    if decisions:
        output.table(["trial", "bracket", f"start {unit}", "why"],
                     [[d["trial"], d["bracket"], f"{d['start_resource']:g}", d["why"]]
                      for d in decisions],
                     title=f"bracket decisions (latest {len(decisions)} of "
                           f"{len(doc['decisions'])}; `--json` has all)")


def _watch(study: Any, args: argparse.Namespace) -> int:
    try:
        study.wait(progress=not args.json)
    except KeyboardInterrupt:
        print(f"\nstopped watching; study {study.id} goes on on the server "
              f"(`hpod study watch {study.id}` follows it again, `hpod study stop {study.id}` "
              "stops it)", file=sys.stderr)
        return output.EXIT_INTERRUPTED
    return _report(study, args.json, top=10)


def _list(client: Any, as_json: bool) -> int:
    from .sdk import Study

    docs = []
    for pb_study in client.list_studies():
        s = Study(client, pb_study.id, pb_study)
        best = _trial(s, pb_study.best_trial) if pb_study.HasField("best_trial") else None
        doc = output.study_json(pb_study, best)
        doc["first_trial_error"] = None
        if best is None and pb_study.trials_finished:
            # No result although trials ended: say why (one ListTrials for such studies only).
            trials = s.trials(curves=False)
            failed = sorted((t for t in trials if t.state in ("failed", "lost")),
                            key=lambda t: t.id)
            if failed:
                doc["first_trial_error"] = output.headline(failed[0].error) or failed[0].state
        docs.append(doc)
    if as_json:
        output.dump({"studies": docs})
        return 0
    rows = [[d["id"], d["name"] or "-", d["algorithm"], d["trainer"] or "ask/tell", d["state"],
             f"{d['trials_finished']}/{d['trials_total']}",
             output.fmt_value(d["best"]["value"] if d["best"] else None),
             output.one_line(d["error"] or (f"trials failed: {d['first_trial_error']}"
                                            if d["first_trial_error"] else ""), 80)]
            for d in docs]
    output.table(["id", "name", "algorithm", "trainer", "state", "finished", "best", "error"],
                 rows)
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    from .spec import build_spec, load_spec_file

    sc = args.study_command
    spec = build_spec(load_spec_file(args.spec)) if sc == "create" else None  # before connecting
    client = _client(args)
    if sc == "list":
        return _list(client, args.json)
    if sc == "create":
        study = client.create_study(spec)
        if args.json and not args.watch:
            output.dump(output.study_json(study.info))
        elif not args.json:
            print(study.id, flush=True)
        return _watch(study, args) if args.watch else 0
    study = client.study(args.study_id)
    if sc in STUDY_ECOSYSTEM:
        return STUDY_ECOSYSTEM[sc](study, args)
    if sc == "watch":
        return _watch(study, args)
    if sc == "show":
        return _report(study, args.json)
    if sc == "best":
        return _print_best(study, args.json)
    if sc == "stop":
        study.stop()
        if args.json:
            output.dump(output.study_json(study.info))
        else:
            print(f"stopped {study.id}")
    elif sc == "raise-max-resource":
        study.raise_max_resource()
        if args.json:
            output.dump(output.study_json(study.info))
        else:
            print(f"{study.id}: max resource now {study.info.spec.resource.max_resource:g}")
    return 0


def _print_best(study: Any, as_json: bool) -> int:
    best, source = _best(study)
    if as_json:
        # The trial's own fields at the top (all null when there is none), so `best --json`
        # reads like one trial.
        fields = output.trial_json(best) if best is not None else dict.fromkeys(
            output.TRIAL_FIELDS)
        output.dump({"study_id": study.id, "source": source, **fields})
    elif best is None:
        print(f"study {study.id}: no trial has a result yet "
              f"({output.study_state(study.info)}; `hpod study show {study.id}` lists its "
              "trials and errors)")
    else:
        note = "" if source == "algorithm" else " (incumbent: best of the furthest-trained)"
        print(f"trial {best.id} value {best.value:.6g} at {best.resource:g}{note}: "
              f"{best.config}")
    return output.EXIT_OK if best is not None else output.EXIT_BAD_OUTCOME


COMMANDS = {"server": cmd_server, "worker": cmd_worker, "local": cmd_local, "demo": cmd_demo,
            "plan": cmd_plan, "study": cmd_study}



# ---------------------------------------------------------------- simulate


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


# ---------------------------------------------------------------- Optuna export, plots


def _add_ecosystem_parsers(ssub: Any) -> None:
    sp = ssub.add_parser("export", help="write the study's trials into an Optuna storage")
    sp.add_argument("study_id")
    sp.add_argument("--address", default=DEFAULT_ADDRESS)
    sp.add_argument("--optuna-storage", required=True, help="an RDB URL (sqlite:///hpod.db) "
                    "or a journal file path (journal:PATH or any path without ://)")
    sp.add_argument("--follow", action="store_true",
                    help="mirror live, as trials change, until the study ends")
    sp.add_argument("--json", action="store_true", help="print JSON (docs/cli-json.md)")
    sp = ssub.add_parser("plot", help="PNG plots of the study")
    sp.add_argument("--json", action="store_true", help="print JSON (docs/cli-json.md)")
    sp.add_argument("study_id")
    sp.add_argument("--address", default=DEFAULT_ADDRESS)
    sp.add_argument("--out", required=True, help="directory for the PNG files")
    sp.add_argument("--optuna-storage", default=None,
                    help="a live mirror's storage: gives the plots against wall time")


def cmd_study_export(study: Any, args: argparse.Namespace) -> int:
    from .optuna_export import export_study

    def show(ev: Any) -> None:
        if not args.json and ev.kind not in ("progress", "study_ended"):
            print(f"[{ev.kind}] trial {ev.trial_id}", flush=True)

    mirror = export_study(study, args.optuna_storage, follow=args.follow, on_event=show)
    if args.json:
        output.dump({"study_id": study.id, "optuna_study": mirror.name,
                     "trials": len(mirror.trials), "storage": args.optuna_storage})
    else:
        print(f"study {study.id}: {len(mirror.trials)} trials in Optuna study {mirror.name!r} "
              f"at {args.optuna_storage}")
    return 0


def cmd_study_plot(study: Any, args: argparse.Namespace) -> int:
    from .plots import plot_study

    paths, notes = plot_study(study, args.out, args.optuna_storage, with_notes=True)
    if args.json:
        output.dump({"study_id": study.id, "files": [str(p) for p in paths], "notes": notes})
        return 0
    for path in paths:
        print(path)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    return 0


STUDY_ECOSYSTEM = {"export": cmd_study_export, "plot": cmd_study_plot,
                   "pareto": pareto.cmd_study_pareto}

# ---------------------------------------------------------------- worker Redis users


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
    from hpod.server.store.connect import plain_url, sync_client

    password = args.password or acl.new_password()
    major = args.redis_version
    plain, cluster = plain_url(args.redis_url)
    admin = None
    if args.apply:
        import redis

        entry = redis.Redis.from_url(plain, decode_responses=True)
        try:
            major = major or acl.redis_major_version(entry)
            cluster = cluster or bool(int(entry.info("cluster").get("cluster_enabled", 0) or 0))
            # On a cluster the user goes to every node, masters and replicas (a replica that
            # takes over must know it).
            admin = sync_client(args.redis_url, cluster, decode_responses=True)
        except redis.RedisError as e:
            print(f"hpod redis-acl: {type(e).__name__}: {e}", file=sys.stderr)
            return 2
        finally:
            entry.close()
    major = major or 7
    if major < 6:
        print(f"hpod redis-acl: Redis {major} has no ACL users", file=sys.stderr)
        return 2
    rules = acl.acl_rules(acl.hash_password(password), major, args.trainer,
                          select=acl.url_db(args.redis_url) != 0, cluster=cluster)
    url = acl.worker_url(args.redis_url, args.name, password, cluster=cluster)
    if admin is not None:
        try:
            if cluster:
                admin.execute_command("ACL", "SETUSER", args.name, *rules,
                                      target_nodes=admin.ALL_NODES)
            else:
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
              "(ACL SAVE with an aclfile, or CONFIG REWRITE)"
              + ("; on a cluster, a node added later needs it too (run this again)"
                 if cluster else ""))
    print("# the worker's HPOD_REDIS_URL (a secret):")
    print(url)
    return 0


COMMANDS["redis-acl"] = cmd_redis_acl

if __name__ == "__main__":
    sys.exit(main())
