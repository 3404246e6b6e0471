"""What a folder handed to a command as a model holds, and the one line to say when it is not what the command
needs. A reward model may be named by its version folder, by a project's folder of versions (its current
version is used) or by a version store's root that holds one project (what `rlhf-backend train --out DIR`
writes: DIR/cli/v1). A generator is a folder holding a causal LM (a plain `save_pretrained` folder, or a
generator version, <project>/generator/v<N>).
"""

from __future__ import annotations

import json
from pathlib import Path

from model.store import POINTER, VersionStore

REWARD_EXPECTED = ("expected a reward-model version folder (e.g. MODEL_DIR/4/v3, or any "
                   "AutoModelForSequenceClassification folder), a project's folder of versions (its current "
                   "version is used) or a version store's root holding one project (train --out's DIR)")
GENERATOR_EXPECTED = ("expected smollm2, a Hugging Face id, a .gguf file or a folder holding a causal LM (a "
                      "save_pretrained folder, or a generator version such as MODEL_DIR/4/generator/v2)")


class NotAModel(ValueError):
    """The folder is not the kind of model asked for; the message (one line) says what it is and what was expected."""


def architecture(folder: Path) -> str | None:
    """The model class its config.json names (e.g. BertForSequenceClassification), "" if it names none, None
    without a readable config.json."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    names = config.get("architectures") if isinstance(config, dict) else None
    return names[0] if isinstance(names, list) and names and isinstance(names[0], str) else ""


def _is_reward(arch: str) -> bool:
    return arch.endswith("ForSequenceClassification")


def _is_causal_lm(arch: str) -> bool:
    return arch.endswith("ForCausalLM")


def _holds_versions(folder: Path) -> bool:
    return (folder / POINTER).is_file() or bool(VersionStore(folder.parent).versions(folder.name))


def reward_model_folder(path: str | Path) -> Path:
    """The folder of the reward model `path` names (see the module's docstring); NotAModel otherwise."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise NotAModel(f"{folder} {'is a file' if folder.exists() else 'does not exist'}: {REWARD_EXPECTED}")
    arch = architecture(folder)
    if arch is not None:
        if _is_reward(arch) or arch == "":
            return folder
        raise NotAModel(f"{folder} holds a {arch}, not a reward model: {REWARD_EXPECTED}")
    if _holds_versions(folder):
        store, project = VersionStore(folder.parent), folder.name
        current, versions = store.current(project), store.versions(project)
        if current is None:
            raise NotAModel(f"{folder} has no current version ({', '.join(versions) or 'and no complete one'}): "
                            f"pass a version folder, e.g. {folder / (versions or ['v1'])[-1]}")
        return reward_model_folder(store.path(project, current))
    projects = sorted(p.name for p in folder.iterdir() if p.is_dir() and VersionStore(folder).current(p.name))
    if len(projects) == 1:
        return reward_model_folder(folder / projects[0])
    if projects:
        raise NotAModel(f"{folder} is a version store with several projects ({', '.join(projects)}): pass one of "
                        f"them, e.g. {folder / projects[0]}")
    raise NotAModel(f"{folder} holds no model (no config.json, no versions): {REWARD_EXPECTED}")


def generator_problem(name: str) -> str | None:
    """Why `name` (a --model value) cannot be a generator, in one line; None when it may be one. Names that
    are no folder (smollm2, a Hugging Face id, a .gguf file) are left to the generator to load."""
    folder = Path(name).expanduser()
    if not folder.is_dir():
        looks_like_a_path = name.startswith(("/", "./", "../", "~")) and not name.endswith(".gguf")
        return f"{folder} does not exist: {GENERATOR_EXPECTED}" if looks_like_a_path and not folder.exists() else None
    arch = architecture(folder)
    if arch is not None:
        if _is_causal_lm(arch) or arch == "":
            return None
        kind = "a reward model" if _is_reward(arch) else "no causal LM"
        return f"{folder} holds {kind} ({arch}), not a generator: {GENERATOR_EXPECTED}"
    if _holds_versions(folder):
        current = VersionStore(folder.parent).current(folder.name)
        example = folder / (current or "v1")
        return f"{folder} is a folder of versions, not a model: pass a version folder, e.g. {example}"
    try:
        reward_model_folder(folder)
        return f"{folder} is a reward-model version store, not a generator: {GENERATOR_EXPECTED}"
    except NotAModel:
        return f"{folder} holds no model (no config.json): {GENERATOR_EXPECTED}"
