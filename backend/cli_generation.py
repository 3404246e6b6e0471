"""`rlhf-backend generate` (prompts -> dataset.json with two answers each, or k for a Ranker project) and
`rlhf-backend import` (a dataset or prompt file -> Label Studio tasks)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
from pathlib import Path

from backend.answers import place_answers
from backend.config import ConfigError, Settings, generation_config
from model.conversation import prompt_messages
from model.generation.types import prompt_problem
from model.pairs import DEFAULT_FIELDS, DEFAULT_RANKER_FIELDS, GENERATION_KEY, RankerFields, TaskFields

IMPORT_BATCH = 500


def read_records(path: Path) -> list:
    """A JSON list, JSONL, or plain text with one prompt per line (detected in that order).

    Items are strings or objects; blank lines are skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    if isinstance(data, list):
        return data
    lines = [line for line in text.splitlines() if line.strip()]
    try:
        records = [json.loads(line) for line in lines]
        if all(isinstance(r, (dict, str)) for r in records):
            return records
    except json.JSONDecodeError:
        pass
    return [line.strip() for line in lines]  # plain text


def prompt_of(record):
    """The prompt in a record: the string itself, its "prompt" key, or its LS task's data.prompt."""
    if isinstance(record, dict):
        data = record.get("data", record) if isinstance(record.get("data"), dict) else record
        return data.get("prompt")
    return record


def dataset_items(results, describe: dict, rng: random.Random, extras: list[dict],
                  fields: TaskFields | RankerFields = DEFAULT_FIELDS) -> list[dict]:
    """dataset.json items with the answers in random order (two as answer1/answer2, or a Ranker's list);
    the order and how the answers were made are kept under GENERATION_KEY, so preferences can later be
    mapped back to the models."""
    return [{**extra, fields.prompt: result.prompt,
             **place_answers(result.answers, fields, rng, describe, result.truncated)}
            for result, extra in zip(results, extras) if result.answers is not None]


def generate_command(args, settings: Settings) -> int:
    from tqdm import tqdm

    from model.folders import generator_problem
    from model.generation import load_generator
    from model.generation.types import GenerationError

    # A local model is checked here (an OpenAI-compatible server's model is a name it serves, even a path).
    if args.model and settings.generator == "local" and (problem := generator_problem(args.model)):
        raise ConfigError(f"generate --model: {problem}")
    records = read_records(Path(args.prompts))
    prompts = [prompt_of(r) for r in records]
    # Keep any other keys of object records (ids, metadata) in the output items.
    extras = [{k: v for k, v in r.items() if k not in ("prompt", "answer1", "answer2", GENERATION_KEY)}
              if isinstance(r, dict) and "data" not in r else {} for r in records]
    overrides = {k: v for k, v in {"model": args.model, "max_new_tokens": args.max_new_tokens,
                                   "seed": args.seed, "batch_size": args.batch_size,
                                   "candidates": args.candidates}.items() if v is not None}
    config = dataclasses.replace(generation_config(settings), **overrides)
    try:
        generator = load_generator(config)
        with tqdm(total=len(prompts), unit="prompt", file=sys.stderr, desc="generating") as bar:
            results = generator.generate(prompts, progress=lambda done, total: bar.update(done - bar.n))
    except GenerationError as exc:
        print(f"rlhf-backend generate: {exc}", file=sys.stderr)
        return 1
    fields = DEFAULT_RANKER_FIELDS if config.candidates > 2 else DEFAULT_FIELDS
    items = dataset_items(results, generator.describe(), random.Random(config.seed), extras, fields)
    Path(args.output).write_text(json.dumps(items, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    failed = [(i, r.error) for i, r in enumerate(results) if r.answers is None]
    for index, error in failed:
        print(f"prompt {index + 1}: {error}", file=sys.stderr)
    truncated = sum(r.truncated for r in results)
    print(f"wrote {len(items)} items to {args.output}" + (f"; {len(failed)} prompts failed" if failed else "")
          + (f"; {truncated} prompts were truncated to fit the model" if truncated else ""), file=sys.stderr)
    return 1 if failed else 0


def build_tasks(records: list, fields: TaskFields | RankerFields = DEFAULT_FIELDS) -> list[dict]:
    """Label Studio task data for a project whose config uses `fields`.

    Records are prompt strings, dataset.json items or LS tasks ({"data": {...}}). The default key names
    (prompt/answer1/answer2) are renamed to the project's, missing answers become "" (Label Studio
    rejects tasks without them; the backend's generation job fills them in), and a text prompt becomes
    chat messages where the project shows the prompt as a dialogue (label_config_chat.xml)."""
    tasks = []
    for number, record in enumerate(records, 1):
        if isinstance(record, str):
            data = {"prompt": record}
        elif isinstance(record, dict):
            data = dict(record["data"]) if isinstance(record.get("data"), dict) else dict(record)
        else:
            raise ConfigError(f"item {number} is a {type(record).__name__}, not a prompt string or an object")
        ranker = isinstance(fields, RankerFields)
        renames = ((DEFAULT_RANKER_FIELDS.answers, fields.answers),) if ranker else \
            ((DEFAULT_FIELDS.left, fields.left), (DEFAULT_FIELDS.right, fields.right))
        for default, key in ((DEFAULT_FIELDS.prompt, fields.prompt), *renames):
            if key not in data and default in data:
                data[key] = data.pop(default)
        problem = prompt_problem(data.get(fields.prompt))
        if problem:
            raise ConfigError(f'item {number}: "{fields.prompt}": {problem}')
        if fields.dialogue_prompt and isinstance(data[fields.prompt], str):  # a Paragraphs tag shows messages
            data[fields.prompt] = prompt_messages(data[fields.prompt])
        for key in (fields.answers,) if ranker else (fields.left, fields.right):
            if data.get(key) is None:
                data[key] = [] if ranker else ""
        tasks.append({"data": data})
    return tasks


def with_label_studio(settings: Settings, command: str, work) -> int:
    """`work(ls)` with a Label Studio SDK client; Label Studio's errors become one line (its answer's body,
    masked, never the SDK's message: that one holds the headers, a session cookie)."""
    if not settings.label_studio_url or not settings.label_studio_api_key:
        raise ConfigError(f"{command} needs LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY (Label Studio > "
                          "Account & Settings > Access Token)")
    import httpx
    from label_studio_sdk import LabelStudio
    from label_studio_sdk.core.api_error import ApiError

    ls = LabelStudio(base_url=settings.label_studio_url, api_key=settings.label_studio_api_key)
    try:
        return work(ls)
    except ApiError as exc:
        from backend.logs import RedactSecrets

        body = RedactSecrets(settings.secrets()).redact(" ".join(str(exc.body).split()))[:500]
        print(f"rlhf-backend {command}: Label Studio at {settings.label_studio_url} answered "
              f"{exc.status_code}: {body}", file=sys.stderr)
        return 1
    except httpx.HTTPError as exc:
        print(f"rlhf-backend {command}: cannot reach Label Studio at {settings.label_studio_url}: "
              f"{type(exc).__name__}", file=sys.stderr)
        return 1


def import_tasks(ls, project: int, tasks: list[dict], batch_size: int = IMPORT_BATCH) -> list[int]:
    """Import `tasks` into `project` in batches, with a progress bar; the new tasks' ids."""
    from tqdm import tqdm

    ids = []
    with tqdm(total=len(tasks), unit="task", file=sys.stderr, desc="importing") as bar:
        for start in range(0, len(tasks), batch_size):
            batch = tasks[start:start + batch_size]
            response = ls.projects.import_tasks(id=project, request=batch, return_task_ids=True)
            ids += list(getattr(response, "task_ids", None) or [])
            bar.update(len(batch))
    return ids


def import_command(args, settings: Settings) -> int:
    from backend.labels import parse_label_config

    def work(ls):
        fields = parse_label_config(ls.projects.get(id=args.project).label_config)
        tasks = build_tasks(read_records(Path(args.file)), fields)
        ids = import_tasks(ls, args.project, tasks, args.batch_size)
        print(f"imported {len(tasks)} tasks into project {args.project}"
              + (f" (ids {ids[0]}..{ids[-1]})" if ids else ""), file=sys.stderr)
        return 0

    return with_label_studio(settings, "import", work)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "generate", help="write two candidate answers per prompt into a dataset.json (offline)",
        description="Generate two candidate answers for every prompt with the configured generator "
                    "(GENERATOR, GENERATOR_MODEL, TEMPERATURE, ... or the options below) and write "
                    'Label Studio\'s RLHF dataset form [{"prompt", "answer1", "answer2"}]. The answers '
                    f'are in random order; "{GENERATION_KEY}" records which model answer went left '
                    "and how the answers were made. Exit status 1 if any prompt failed (the others "
                    "are still written). Options left out take their values from the environment.")
    p.add_argument("prompts", metavar="PROMPTS",
                   help='a JSON list (strings or objects with "prompt"), JSONL, or text with one prompt per line; '
                        'a prompt is text, an hh-rlhf transcript ("\\n\\nHuman: ...\\n\\nAssistant:") or a list '
                        'of chat messages [{"role", "content"}], and a conversation is answered as one')
    p.add_argument("-o", "--output", required=True, metavar="DATASET", help="where to write the dataset JSON")
    p.add_argument("--model", help="overrides GENERATOR_MODEL: smollm2, a Hugging Face id, a .gguf, or a folder "
                   "holding a causal LM (e.g. a generator version, MODEL_DIR/<project>/generator/v<N>)")
    p.add_argument("--max-new-tokens", type=int, help="overrides MAX_NEW_TOKENS: the longest answer in tokens")
    p.add_argument("--seed", type=int, help="overrides GENERATION_SEED; also fixes the answer order")
    p.add_argument("--batch-size", type=int, help="overrides GENERATION_BATCH_SIZE: prompts per forward pass")
    p.add_argument("--candidates", type=int, metavar="K",
                   help='answers per prompt (default 2: "answer1"/"answer2"; more: a Ranker task\'s "answers" list, '
                        "for label_config_ranker.xml)")
    p.set_defaults(handler=generate_command)

    p = subparsers.add_parser(
        "import", help="import a dataset or prompt file into a Label Studio project",
        description="Import tasks into Label Studio project N (needs LABEL_STUDIO_URL and "
                    "LABEL_STUDIO_API_KEY). FILE is a dataset.json from `generate`, a JSON/JSONL list of "
                    "task data, or plain prompts one per line. Keys are renamed to the project's label "
                    "config; tasks without answers get empty ones, which the backend then generates. In a "
                    "project that shows the prompt as a dialogue (label_config_chat.xml), text prompts and "
                    "hh-rlhf transcripts become chat messages.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("file", metavar="FILE", help="dataset.json, JSONL, or text with one prompt per line")
    p.add_argument("--project", type=int, required=True, metavar="N", help="Label Studio project id")
    p.add_argument("--batch-size", type=int, default=IMPORT_BATCH, help="tasks per import request")
    p.set_defaults(handler=import_command)
