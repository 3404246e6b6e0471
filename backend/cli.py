"""`rlhf-backend`: run the server and the worker, and work with data and models from the shell."""

from __future__ import annotations

import argparse
import logging
import signal
import subprocess
import sys
import time

from backend.config import OPTIONS, ConfigError, Settings, load_settings
from backend.logs import setup_logging
from backend.queue import KINDS

log = logging.getLogger("rlhf-backend")


def warn_if_label_studio_unset(settings: Settings) -> None:
    if not settings.label_studio_url:
        log.warning("LABEL_STUDIO_URL is not set: jobs will reach Label Studio through the hostname and token it "
                    "sends in /setup, which works only with legacy tokens enabled%s. Set LABEL_STUDIO_URL and "
                    "LABEL_STUDIO_API_KEY to be sure.",
                    "" if settings.label_studio_allow_private_hosts else " and a public Label Studio address")


def import_model_code(worker=None) -> None:
    """gunicorn post_worker_init hook: import torch and the default reward model's transformers classes
    before a server worker takes requests. The first /predict then does not pay the seconds that takes, and
    no two request threads import transformers at once (its lazy module can fail with "cannot import
    name" when two threads initialise it together). Also: freed tensors' memory goes back to the system."""
    from backend.heap import return_freed_memory

    return_freed_memory()
    import torch  # noqa: F401
    from transformers import AutoModelForSequenceClassification, AutoTokenizer  # noqa: F401
    from transformers.models.bert import modeling_bert  # noqa: F401


def serve(args, settings: Settings) -> int:
    """gunicorn serving backend.app, configured from Settings (no gunicorn.conf.py to keep in sync)."""
    from gunicorn.app.base import BaseApplication

    warn_if_label_studio_unset(settings)

    from backend.app import create_app

    class Server(BaseApplication):
        def load_config(self):
            self.cfg.set("bind", f"{settings.host}:{settings.port}")
            self.cfg.set("workers", settings.workers)
            self.cfg.set("threads", settings.threads)
            self.cfg.set("worker_class", "gthread")
            self.cfg.set("timeout", 120)  # Label Studio waits up to 100 s for /predict
            self.cfg.set("graceful_timeout", 20)
            self.cfg.set("loglevel", settings.log_level.lower())
            self.cfg.set("accesslog", "-" if settings.log_level == "DEBUG" else None)
            self.cfg.set("access_log_format", '%(h)s %(t)s "%(r)s" %(s)s %(b)s "%(a)s"')  # no %(u)s: basic-auth user
            self.cfg.set("post_worker_init", import_model_code)

        def load(self):
            return create_app(settings)

    Server().run()
    return 0


def worker(args, settings: Settings) -> int:
    from backend.worker import run_worker

    warn_if_label_studio_unset(settings)
    kinds = tuple(args.queues.split(",")) if args.queues else KINDS
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ConfigError(f"unknown queue(s) {', '.join(sorted(unknown))}; choose from {', '.join(KINDS)}")
    run_worker(settings, kinds=kinds, burst=args.burst, fork=args.fork, sweep=not args.no_sweep)
    return 0


def start(args, settings: Settings) -> int:
    """Server and one worker together; the worker is restarted if it dies (e.g. killed for memory)."""
    import redis

    try:
        redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        print(f"rlhf-backend: Redis is not reachable at REDIS_URL ({type(exc).__name__}). Start it "
              "(e.g. `redis-server --daemonize yes`) or set REDIS_URL.", file=sys.stderr)
        return 1
    command = [sys.executable, "-m", "backend.cli"]
    children = {"server": subprocess.Popen(command + ["serve"]), "worker": subprocess.Popen(command + ["worker"])}
    stopping = False

    def stop(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    restarts, code = 0, 0
    while not stopping:
        time.sleep(0.5)
        if children["server"].poll() is not None:
            code = children["server"].returncode
            log.error("the server exited (%s); stopping", code)
            break
        if children["worker"].poll() is not None:
            restarts += 1
            delay = min(60, 2 ** min(restarts, 6))
            log.error("the worker exited (%s); restarting in %s s", children["worker"].returncode, delay)
            time.sleep(delay)
            children["worker"] = subprocess.Popen(command + ["worker", "--no-sweep"])
    for child in children.values():
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children.values():
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
    return code


def versions(args, settings: Settings) -> int:
    """List a project's reward-model versions with their held-out metrics, then its generator versions with
    their evaluations; optionally make one current (--generator: a generator version)."""
    from backend.cli_tuning import generator_versions
    from model.store import VersionStore

    if args.generator:
        return generator_versions(args.project, settings, args.activate)
    store = VersionStore(settings.model_dir)
    if args.activate:
        store.activate(args.project, args.activate)  # servers pick it up on their next request
        print(f"project {args.project}: {args.activate} is now current")
    current = store.current(args.project)
    names = store.versions(args.project)
    if not names:
        print(f"project {args.project} has no versions under {store.project_dir(args.project)}")
        return generator_versions(args.project, settings)
    print(f"{'':2}{'version':<9}{'pairs':>7}{'accuracy':>10}{'95% interval':>16}{'ECE':>7}  trained")
    for name in names:
        m = store.metrics(args.project, name)
        acc, ci = m.get("val_accuracy"), m.get("val_accuracy_ci") or [None, None]
        fmt = lambda x, spec: format(x, spec) if isinstance(x, (int, float)) else "-"  # noqa: E731
        interval = f"{fmt(ci[0], '.3f')}-{fmt(ci[1], '.3f')}" if ci[0] is not None else "-"
        print(f"{'*' if name == current else '':2}{name:<9}{fmt(m.get('n_pairs'), 'd'):>7}{fmt(acc, '.3f'):>10}"
              f"{interval:>16}{fmt(m.get('ece'), '.3f'):>7}  {m.get('mode', '-')}")
    return generator_versions(args.project, settings)


def config_help() -> str:
    return "environment variables:\n" + "\n".join(
        f"  {o.name:<32} {o.help}" + (f" (default: {o.default})" if o.default else "") for o in OPTIONS)


def build_parser() -> argparse.ArgumentParser:
    from backend import cli_arena, cli_generation, cli_report, cli_reward, cli_tuning

    parser = argparse.ArgumentParser(
        prog="rlhf-backend", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Label Studio ML backend for collecting human preferences for RLHF. It writes two candidate "
                    "answers into every imported prompt, pre-annotates the preferred one with a reward model, "
                    "and retrains that model as annotations arrive.",
        epilog=config_help())
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = commands.add_parser("start", help="run the server and a worker together (the usual way to run it)",
                            description="Run the HTTP server (gunicorn) and one RQ worker; restart the worker if "
                                        "it dies. Needs Redis at REDIS_URL.")
    p.set_defaults(handler=start)
    p = commands.add_parser("serve", help="run only the HTTP server that Label Studio calls")
    p.set_defaults(handler=serve)
    p = commands.add_parser("worker", help="run only an RQ worker (generation and training jobs)",
                            description="Run one RQ worker. Start several, on this machine or others sharing "
                                        "Redis, to work in parallel.")
    p.add_argument("--queues", help=f"comma-separated queues to work, in priority order (default: {','.join(KINDS)})")
    p.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    p.add_argument("--fork", action="store_true",
                   help="run each job in a forked child (isolates crashes; reloads models per job; not with CUDA)")
    p.add_argument("--no-sweep", action="store_true",
                   help="skip the start-up sweep that queues catch-up jobs for every known project")
    p.set_defaults(handler=worker)
    p = commands.add_parser("versions", help="list a project's reward-model and generator versions, or roll back",
                            description="List the reward-model versions of a project (* marks the current one) "
                                        "with their held-out metrics, then its generator versions with each one's "
                                        "evaluation (length-controlled win rate over the version it was tuned "
                                        "from) and promotion. --activate makes another version current (a "
                                        "rollback); running servers switch on their next request. With "
                                        "--generator: only the generator versions, and --activate serves that "
                                        "generator version (none: GENERATOR_MODEL) from the next generation job on.")
    p.add_argument("--project", type=int, required=True, help="Label Studio project id")
    p.add_argument("--activate", metavar="VERSION", help="make this version (e.g. v3) the current one")
    p.add_argument("--generator", action="store_true", help="the generator's versions instead of the reward "
                   "model's (--activate none: back to GENERATOR_MODEL)")
    p.set_defaults(handler=versions)
    cli_generation.register(commands)
    cli_reward.register(commands)
    cli_report.register(commands)
    cli_tuning.register(commands)
    cli_arena.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"rlhf-backend: configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, settings.secrets())
    try:
        return args.handler(args, settings) or 0
    except ConfigError as exc:
        print(f"rlhf-backend: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
