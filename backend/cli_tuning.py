"""`rlhf-backend tune|compare`: DPO-tune the generator on a pairs file into a new generator version, and
compare two generator versions on held-out prompts, judged by a reward model that did not see the pairs the
policy was tuned on."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
from pathlib import Path

from backend.cli_reward import CLI_PROJECT, _bar, _data_help, _fields, _read, positive_int
from backend.config import ConfigError, Settings, generation_config, train_config


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, not {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
    return value


def share(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 0 and below 1, not {text}")
    return value


def tune_config(args, settings: Settings):
    from model.tuning import TuneConfig

    overrides = {"epochs": args.epochs, "learning_rate": args.learning_rate, "beta": args.beta,
                 "batch_size": args.batch_size, "micro_batch_size": args.micro_batch_size, "lora_r": args.lora_r,
                 "lora_layers": args.lora_layers, "max_prompt_tokens": args.max_prompt_tokens,
                 "max_length": args.max_length, "seed": args.seed}
    return TuneConfig(time_budget=args.time_budget, bf16=not args.no_bf16, system_prompt=settings.system_prompt,
                      threads=settings.torch_threads, cache_dir=settings.model_dir / "generator-cache",
                      **{k: v for k, v in overrides.items() if v is not None})


def _remove_new_folders(folders: list[Path]) -> None:
    """Undo the folders this command created, if they stayed empty: bad input changes nothing."""
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:
            pass


def queue_tune(args, settings: Settings) -> int:
    """`tune --project N`: queue a tuning round on the worker (backend/jobs/tune.py) and print its job id."""
    import redis

    from backend.jobs.tune import tune
    from backend.queue import JobQueue, connect_redis

    local = ("data", "out", "base", "time_budget", "epochs", "learning_rate", "beta", "batch_size",
             "micro_batch_size", "lora_r", "lora_layers", "max_prompt_tokens", "max_length", "seed", "label_config")
    given = [f"--{name.replace('_', '-')}" for name in local if getattr(args, name) is not None]
    if given:
        raise ConfigError(f"--project queues a round on the worker, which takes its settings from the environment "
                          f"(TUNE_*); leave out {', '.join(given)}")
    queue = JobQueue(connect_redis(settings.redis_url), settings.queue_prefix, settings.job_timeout,
                     settings.job_retries)
    try:
        queued = queue.enqueue(tune, args.project)
    except redis.RedisError as exc:
        raise ConfigError(f"cannot queue the job: Redis is not reachable at REDIS_URL ({type(exc).__name__})") from None
    print(f"project {args.project}: " + ("a tuning round was already queued" if queued.coalesced else
          "queued a tuning round") + "; a worker taking the tune queue runs it (progress in /jobs), then "
          "`rlhf-backend versions --project N --generator` shows the result", file=sys.stderr)
    print(queued.job_id)
    return 0


def tune_command(args, settings: Settings) -> int:
    from model.comparison import split_by_prompt
    from model.store import GENERATOR, VersionStore
    from model.tuning import TuningError, check_causal_lm, tune, usable_pairs

    if args.project is not None:
        return queue_tune(args, settings)
    if not (args.data and args.out):
        raise ConfigError("give --data PAIRS and --out DIR to tune here, or --project N to queue a round on the worker")
    base = args.base or settings.generator_model
    if settings.generator == "openai" and not args.base:
        raise ConfigError("GENERATOR=openai serves a model from a server; give --base, a local model to tune")
    pairs = _read(args.data, _fields(args))
    try:
        config = tune_config(args, settings)
        train_pairs, held = split_by_prompt(usable_pairs(pairs), args.holdout, args.seed or 0)
        if not train_pairs:
            raise TuningError(f"{args.data} holds no usable preference pair (a prompt and two different, "
                              f"non-empty answers) to tune on; it has {len(pairs)} pairs")
        check_causal_lm(base)
    except TuningError as exc:
        raise ConfigError(str(exc)) from None
    store = VersionStore(Path(args.out), GENERATOR)
    folder = store.project_dir(CLI_PROJECT)
    created = [p for p in (Path(args.out), folder.parent, folder) if not p.exists()]
    provenance = {"data": str(args.data), "holdout": args.holdout, "held_out_pairs": len(held)}
    bar, progress = _bar("tuning")
    try:
        with bar, store.new_version(CLI_PROJECT) as pending:
            record = tune(train_pairs, base, pending.path, config, progress, provenance=provenance)
    except TuningError as exc:
        _remove_new_folders(created)
        raise ConfigError(str(exc)) from None
    path = store.path(CLI_PROJECT, pending.name)
    accuracy = record.get("reward_accuracy")
    print(f"tuned on {record['pairs_trained']} pairs in {record['seconds']:.0f} s: {record['steps']} of "
          f"{record['planned_steps']} steps" + (" (stopped by the time budget)" if record["stopped_by_budget"] else "")
          + (f", DPO reward accuracy {accuracy:.2f} over the last steps" if accuracy is not None else "")
          + f"; {len(held)} pairs held out for `rlhf-backend compare`", file=sys.stderr)
    print(path)  # last line of stdout: scripts read the version's folder from it
    return 0


def _pct(x) -> str:
    return f"{100 * x:.1f}%"


def print_report(report: dict) -> None:
    judge = report["judge"]
    accuracy = judge.get("accuracy")
    ci = judge.get("accuracy_ci") or [None, None]
    print(f"judge: {judge['judge']}; its held-out accuracy "
          + (f"{_pct(accuracy)} [{_pct(ci[0])}, {_pct(ci[1])}] on {judge['accuracy_pairs']} pairs" if accuracy is not None
             else "unknown (too few pairs to hold any out)"))
    print(f"  note: {judge['note']}")
    print(f"prompts: {report['n_prompts']} held out, {report['n_comparisons']} comparisons "
          f"({report['wins']} won, {report['losses']} lost, {report['ties']} tied); "
          f"{report['failed_prompts']} prompts without answers")
    print(f"{'win rate of new over base':<28}{'':>8}{'95% interval':>20}")
    for name, key in (("raw", "win_rate"), ("length-controlled", "lc_win_rate")):
        lo, hi = report[key + "_ci"]
        print(f"{name:<28}{_pct(report[key]):>8}{'[' + _pct(lo) + ', ' + _pct(hi) + ']':>20}")
    lo, hi = report["length_change_ci"]
    print(f"mean answer length: {report['mean_length_base']:.0f} -> {report['mean_length_new']:.0f} characters "
          f"({report['length_change']:+.1%}, 95% interval [{lo:+.1%}, {hi:+.1%}])")
    decision = report["promotion"]
    print("promote: yes" if decision["promote"] else "promote: no; " + "; ".join(decision["reasons"]))


def generator_versions(project: int, settings: Settings, activate: str | None = None) -> int:
    """`versions --project N --generator [--activate vK|none]`: the project's generator versions with their
    evaluation (LC win rate over the version each was tuned from) and promotion; --activate serves another one
    (none: GENERATOR_MODEL again) from the next generation job on."""
    from model.store import GENERATOR, VersionStore
    from model.tuning_round import EVALUATION_FILE

    store = VersionStore(settings.model_dir, GENERATOR)
    if activate == "none":
        store.deactivate(project)
        print(f"project {project}: the configured generator ({settings.generator_model}) answers new prompts again")
    elif activate:
        try:
            store.activate(project, activate)
        except (FileNotFoundError, ValueError) as exc:
            raise ConfigError(f"{exc}; `rlhf-backend versions --project {project} --generator` lists them") from None
        print(f"project {project}: generator {activate} answers new prompts from the next generation job on")
    names, current = store.versions(project), store.current(project)
    if not names:
        print(f"project {project} has no generator versions under {store.project_dir(project)}; "
              f"{settings.generator_model} answers")
        return 0
    print(f"generator versions ({'*' + current if current else f'none current: {settings.generator_model} answers'})")
    print(f"{'':2}{'version':<9}{'from':<9}{'pairs':>7}{'steps':>7}{'LC win rate':>13}{'95% interval':>16}"
          f"{'length':>9}  promotion")
    for name in names:
        tuning, ev = store.metrics(project, name, "tuning.json"), store.metrics(project, name, EVALUATION_FILE)
        lc, ci = ev.get("lc_win_rate"), ev.get("lc_win_rate_ci") or [None, None]
        fmt = lambda x, spec: format(x, spec) if isinstance(x, (int, float)) else "-"  # noqa: E731
        interval = f"{_pct(ci[0])}-{_pct(ci[1])}" if ci[0] is not None else "-"
        decision = ev.get("decision") or {}
        verdict = ("promoted" if decision.get("promote") else "not promoted") + f" by {decision['by']}" \
            if decision else ev.get("error", "-")
        print(f"{'*' if name == current else '':2}{name:<9}{tuning.get('base_version') or 'base':<9}"
              f"{fmt(tuning.get('pairs_trained'), 'd'):>7}{fmt(tuning.get('steps'), 'd'):>7}"
              f"{_pct(lc) if lc is not None else '-':>13}{interval:>16}{fmt(ev.get('length_change'), '+.0%'):>9}"
              f"  {verdict}")
    return 0


def compare_command(args, settings: Settings) -> int:
    from model.comparison import evaluate, held_out
    from model.reward.model import RewardModel

    pairs = _read(args.data, _fields(args))
    base = args.base or settings.generator_model
    if not held_out(pairs, base, args.new):
        raise ConfigError(f"{args.data} has no pair whose prompt {args.new} (or the base) was not tuned on; hold "
                          "some out (tune --holdout) or compare on other pairs")
    overrides = {k: v for k, v in {"max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size}.items()
                 if v is not None}
    generation = dataclasses.replace(generation_config(settings), backend="local", seed=args.seed, **overrides)
    judge_config = train_config(settings, mode=args.judge_mode, seed=args.seed)
    judge, info = None, None
    if args.judge:
        judge = RewardModel.load(args.judge)
        info = {"judge": f"the reward model in {args.judge}, accuracy measured on the held-out pairs (higher than "
                         "its true accuracy if it was trained on them)", "path": str(args.judge)}
    bar, progress = _bar("comparing")
    with bar, tempfile.TemporaryDirectory(prefix="rlhf-compare-") as work:
        try:
            report = evaluate(base, args.new, pairs, generation, judge_config, work, max_prompts=args.prompts,
                              judge=judge, judge_info=info, seed=args.seed, progress=progress)
        except ValueError as exc:
            raise ConfigError(str(exc).splitlines()[0]) from None
        if args.keep_judge and not args.judge:
            shutil.copytree(Path(work) / "judge", args.keep_judge, dirs_exist_ok=True)
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2))
    if args.json:
        print(json.dumps(report))
    else:
        print_report(report)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "tune", help="DPO-tune the generator on a pairs file into a new generator version, or queue a project's "
                     "tuning round on the worker",
        description="With --project N: queue the project's tuning round on the worker and print the job id. The "
                    "worker tunes the project's current generator version (GENERATOR_MODEL when it has none) on the "
                    "project's pairs, judges it against that version on held-out prompts (TUNE_HOLDOUT, "
                    "TUNE_EVAL_PROMPTS), keeps the evaluation beside it, and serves it only when TUNE_PROMOTE says "
                    "so; see `rlhf-backend versions --project N --generator`. "
                    "With --data and --out: train the generator on preference pairs here, with DPO (TRL's "
                    "DPOTrainer, each prompt read once for both answers, a LoRA adapter on the linear "
                    "layers of the top third of the decoder layers on a CPU or of all on a GPU, merged into the "
                    "weights at the end) and write a new generator version: a "
                    "save_pretrained folder that AutoModelForCausalLM.from_pretrained and `rlhf-backend generate "
                    "--model FOLDER` load unchanged, with tuning.json (base, data, held-out share, settings, "
                    "training figures, the hashes of the prompts tuned on). A share of the prompts (--holdout) is "
                    "left out, so that `rlhf-backend compare` can judge the version on prompts it never saw. "
                    "Prints the version's folder as the last line of stdout. Defaults suit a CPU: bf16 only where "
                    "it is native, two pairs per forward pass.")
    p.add_argument("--project", type=int, metavar="N", help="queue Label Studio project N's tuning round on the "
                   "worker instead of tuning here (needs Redis at REDIS_URL; the TUNE_* settings apply)")
    p.add_argument("--data", metavar="FILE", help=_data_help())
    p.add_argument("--out", metavar="DIR",
                   help=f"version-store root to write into: the version lands in DIR/{CLI_PROJECT}/generator/vN")
    p.add_argument("--base", metavar="MODEL", help="model to start from: smollm2, a Hugging Face id, a folder (e.g. "
                   "an earlier version) or a .gguf (default: GENERATOR_MODEL)")
    p.add_argument("--holdout", type=share, default=0.3,
                   help="share of the distinct prompts left out of tuning for `compare` (default 0.3)")
    p.add_argument("--time-budget", type=float, metavar="SECONDS",
                   help="stop training before the step that would end past this many seconds from the start, and "
                        "save what it has trained")
    p.add_argument("--epochs", type=positive_float, help="passes over the pairs (default 1)")
    p.add_argument("--learning-rate", type=positive_float,
                   help="of the LoRA weights (default: 5e-5 x layers/N with the adapter on N of the layers, at "
                        "most 1.5e-4: 1.5e-4 on a CPU's default third, 5e-5 on every layer)")
    p.add_argument("--beta", type=positive_float, help="DPO's beta: higher keeps the policy closer to the base "
                   "(default 0.1)")
    p.add_argument("--batch-size", type=positive_int, help="pairs per optimizer step (default 8)")
    p.add_argument("--micro-batch-size", type=positive_int,
                   help="pairs per forward pass, a row each (default 2 on a CPU; the batch size on a GPU)")
    p.add_argument("--lora-r", type=positive_int, help="LoRA rank (default 16; alpha is twice the rank)")
    p.add_argument("--lora-layers", type=positive_int, metavar="N",
                   help="put the adapter on the top N decoder layers (N at or above their number: every layer). The "
                        "layers below need no backward pass and the reference reuses their output, so a third of "
                        "the layers takes about half the time and memory of all; at the default learning rate, "
                        "which rises with it, a third gained as much as every layer in the simulated loop "
                        "(default: a third on a CPU, every layer on a GPU)")
    p.add_argument("--max-prompt-tokens", type=positive_int, help="a longer prompt loses its oldest turns "
                   "(default 256)")
    p.add_argument("--max-length", type=positive_int, help="prompt + answer tokens (default 512)")
    p.add_argument("--no-bf16", action="store_true", help="train in fp32 even where bf16 is native")
    p.add_argument("--seed", type=int, help="held-out split, data order and adapter initialization (default 0)")
    p.add_argument("--label-config", metavar="XML", help="the project's label config, for renamed fields")
    p.set_defaults(handler=tune_command)

    p = subparsers.add_parser(
        "compare", help="win rate of one generator version over another on held-out prompts",
        description="Answer held-out prompts with two generator versions and report the new one's win rate as a "
                    "reward model judges it: raw and length-controlled (AlpacaEval's LC: sigmoid(theta) of the "
                    "fit logit P(win) = theta + phi * tanh(length difference / sd)), each with a 95% bootstrap "
                    "interval over prompts, and the change in mean answer length. Held out means: prompts of "
                    "--data that neither version was tuned on (their tuning.json lists the prompts). Unless "
                    "--judge is given, the judge is a reward model trained on those held-out pairs only, never "
                    "on the tuning pairs; its own held-out accuracy is reported, and a weak judge pulls every win "
                    "rate toward 50%. Ends with the promotion verdict.")
    p.add_argument("--new", required=True, metavar="MODEL", help="the version to judge (e.g. a folder from tune)")
    p.add_argument("--base", metavar="MODEL", help="the version to beat (default: GENERATOR_MODEL)")
    p.add_argument("--data", required=True, metavar="FILE", help=_data_help())
    p.add_argument("--judge", metavar="DIR", help="a reward model folder to judge with instead of training one (it "
                   "must not have been trained on the tuning pairs)")
    p.add_argument("--judge-mode", choices=("fast", "full"), default="fast",
                   help="how the judge is trained: fast (frozen encoder, seconds to minutes) or full (fine-tuned, "
                        "more accurate, minutes per thousand pairs on a CPU)")
    p.add_argument("--keep-judge", metavar="DIR", help="keep the trained judge in this folder")
    p.add_argument("--prompts", type=positive_int, default=512, help="at most this many held-out prompts (default 512)")
    p.add_argument("--max-new-tokens", type=positive_int, help="overrides MAX_NEW_TOKENS for both versions")
    p.add_argument("--batch-size", type=positive_int, help="overrides GENERATION_BATCH_SIZE")
    p.add_argument("--seed", type=int, default=0, help="sampling, prompt choice, judge and bootstrap seed (default 0)")
    p.add_argument("-o", "--output", metavar="JSON", help="also write the whole report here")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument("--label-config", metavar="XML", help="the project's label config, for renamed fields")
    p.set_defaults(handler=compare_command)
