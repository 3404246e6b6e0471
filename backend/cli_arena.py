"""`rlhf-backend arena`: humans as the judge between two generator versions of a project. Each prompt is
answered once by version A and once by version B, and the pair goes into the project as an ordinary Pairwise
task (its own label config's names, sides at random) whose generation record also says which version wrote
which candidate (model/arena.py). The report then shows the human win rate; the labels are training pairs too."""

from __future__ import annotations

import dataclasses
import random
import sys
from pathlib import Path

from backend.cli_generation import build_tasks, dataset_items, import_tasks, prompt_of, read_records, \
    with_label_studio
from backend.config import ConfigError, Settings, generation_config
from model.arena import ARENA_KEY, BASE
from model.generation.types import prompt_problem
from model.pairs import GENERATION_KEY, RankerFields


def resolve_version(name: str, project: int, settings: Settings) -> str:
    """The model a version name stands for: `base` (GENERATOR_MODEL) or a generator version's folder."""
    from model.store import GENERATOR, VersionStore

    if name == BASE:
        if settings.generator != "local":
            raise ConfigError(f"arena answers with local models; base is GENERATOR_MODEL on an "
                              f"{settings.generator} server here: compare generator versions instead")
        return settings.generator_model
    store = VersionStore(settings.model_dir, GENERATOR)
    names = store.versions(project)
    if name not in names:
        have = f"it has {', '.join(names)}" if names else "it has none yet (rlhf-backend tune writes them)"
        raise ConfigError(f"project {project} has no generator version {name!r} under {store.project_dir(project)}; "
                          f"{have}, or use base")
    return str(store.path(project, name))


def read_prompts(path: Path) -> list:
    """The prompts of PROMPTS (the forms `generate` and `import` read); ConfigError for none or a bad one."""
    prompts = [prompt_of(r) for r in read_records(path)]
    if not prompts:
        raise ConfigError(f"{path} holds no prompt")
    for number, prompt in enumerate(prompts, 1):
        if problem := prompt_problem(prompt):
            raise ConfigError(f"{path}: item {number}: {problem}")
    return prompts


def arena_tasks(results, describe: dict, a: str, b: str, rng: random.Random, fields) -> list[dict]:
    """Task data for answered prompts: candidate "a" is version `a`'s answer, "b" version `b`'s, on random sides."""
    items = dataset_items(results, describe, rng, [{}] * len(results), fields)
    for item in items:
        item[GENERATION_KEY][ARENA_KEY] = {"a": a, "b": b}
    return build_tasks(items, fields)


def arena_command(args, settings: Settings) -> int:
    from tqdm import tqdm

    from backend.labels import LabelConfigError, parse_label_config
    from model.folders import generator_problem
    from model.generation import load_generator
    from model.generation.types import GenerationError

    if args.a == args.b:
        raise ConfigError(f"--a and --b are both {args.a}: compare two different versions")
    models = {side: resolve_version(name, args.project, settings) for side, name in (("a", args.a), ("b", args.b))}
    for side, model in models.items():
        if problem := generator_problem(model):
            raise ConfigError(f"arena --{side}: {problem}")
    prompts = read_prompts(Path(args.prompts))
    overrides = {k: v for k, v in {"max_new_tokens": args.max_new_tokens, "seed": args.seed,
                                   "batch_size": args.batch_size}.items() if v is not None}
    config = dataclasses.replace(generation_config(settings), backend="local", model=models["a"],
                                 model_b=models["b"], candidates=2, **overrides)

    def work(ls) -> int:
        try:
            fields = parse_label_config(ls.projects.get(id=args.project).label_config)
        except LabelConfigError as exc:
            raise ConfigError(f"project {args.project}: {exc}") from None
        if isinstance(fields, RankerFields):
            raise ConfigError(f"project {args.project} ranks answers (a <Ranker>); arena needs a Pairwise project "
                              "(label_config.xml), where annotators pick one of two answers")
        try:
            generator = load_generator(config)
            with tqdm(total=len(prompts), unit="prompt", file=sys.stderr, desc=f"{args.a} and {args.b}") as bar:
                results = generator.generate(prompts, progress=lambda done, total: bar.update(done - bar.n))
        except GenerationError as exc:
            print(f"rlhf-backend arena: {exc}", file=sys.stderr)
            return 1
        for number, result in enumerate(results, 1):
            if result.answers is None:
                print(f"prompt {number}: {result.error}", file=sys.stderr)
        tasks = arena_tasks(results, generator.describe(), args.a, args.b, random.Random(config.seed), fields)
        if not tasks:
            print("rlhf-backend arena: no prompt was answered by both versions; nothing imported", file=sys.stderr)
            return 1
        ids = import_tasks(ls, args.project, tasks)
        failed = len(prompts) - len(tasks)
        print(f"imported {len(tasks)} arena tasks ({args.a} against {args.b}) into project {args.project}"
              + (f" (ids {ids[0]}..{ids[-1]})" if ids else "") + (f"; {failed} prompts failed" if failed else ""),
              file=sys.stderr)
        return 1 if failed else 0

    return with_label_studio(settings, "arena", work)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "arena", help="let annotators judge two generator versions: import tasks pairing their answers",
        description="Answer every prompt once with generator version A and once with version B of project N "
                    "(MODEL_DIR/N/generator/vK, or base: GENERATOR_MODEL), and import each pair of answers into "
                    "the project as a Pairwise task in its own label config's names, the two answers on random "
                    f'sides. The task\'s "{GENERATION_KEY}" records which candidate is on the left and, under '
                    f'"{ARENA_KEY}", which version wrote candidate a and b. Once labelled, `rlhf-backend report` '
                    "(and the report page) shows the human win rate of the later version with a Wilson 95% "
                    "interval, and `export` turns the labels into ordinary preference pairs. An unknown version, "
                    "a project that is not Pairwise or a file without prompts stops the command before anything "
                    "is generated or imported. Needs LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY; exit status 1 "
                    "if any prompt failed (the others are imported).")
    p.add_argument("prompts", metavar="PROMPTS",
                   help='a JSON list (strings or objects with "prompt"), JSONL, or text with one prompt per line, '
                        "as for generate and import")
    p.add_argument("--project", type=int, required=True, metavar="N", help="Label Studio project id")
    p.add_argument("--a", required=True, metavar="VERSION", help="a generator version of the project (v1, v2, ...) "
                   "or base")
    p.add_argument("--b", required=True, metavar="VERSION", help="the other version, e.g. the newly tuned one")
    p.add_argument("--max-new-tokens", type=int, help="overrides MAX_NEW_TOKENS: the longest answer in tokens")
    p.add_argument("--seed", type=int, help="overrides GENERATION_SEED; also fixes the sides")
    p.add_argument("--batch-size", type=int, help="overrides GENERATION_BATCH_SIZE: prompts per forward pass")
    p.set_defaults(handler=arena_command)
