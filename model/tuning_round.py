"""One round of generator tuning for a project, as the worker's `tune` job runs it: split the project's pairs
by prompt, DPO-tune the version it serves now into a new generator version, judge the new version against the
one it started from on the held-out prompts, keep that evaluation in the version's folder, and make the new
version current only when the promotion rule (or the team's standing choice) says so.

The held-out prompts are chosen by their hash (`stable_split`), not by a shuffle: a prompt held out in one
round is held out in every later round too, so a version tuned in round 1 has never seen the prompts that
judge it in round 2, and `model.comparison.held_out` keeps them. New prompts fall on either side at the
`holdout` rate.

Writing is all-or-nothing: the version is tuned and evaluated inside `VersionStore.new_version`'s hidden
temporary folder, which is renamed into place only when both are done. A round that fails or is killed
leaves no version and never moves the `current` pointer; a finished round that is not promoted leaves a
complete version on disk that is not served (`rlhf-backend versions --generator --activate vN` serves it).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from model.comparison import evaluate, held_out
from model.pairs import PreferencePair
from model.store import VersionStore
from model.tuning import prompt_hash, tune, usable_pairs

log = logging.getLogger(__name__)

EVALUATION_FILE = "evaluation.json"
PROMOTE_MODES = ("if-better", "always", "never")
Progress = Callable[[float, str], None]


def stable_split(pairs: list[PreferencePair], holdout: float) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """(tuning pairs, held-out pairs): a prompt is held out when its hash, read as a number in [0, 1), is
    below `holdout`; all of a prompt's pairs land on the same side, and in every round on the same one."""
    if not 0 <= holdout < 1:
        raise ValueError(f"the held-out share must be at least 0 and below 1, got {holdout}")
    held = {p.prompt for p in pairs if int(prompt_hash(p.prompt), 16) / 16 ** 16 < holdout}
    return [p for p in pairs if p.prompt not in held], [p for p in pairs if p.prompt in held]


def decide(evaluation: dict | None, mode: str) -> dict:
    """{"promote", "by", "reasons"}: the evaluation's own verdict under "if-better"; "always" and "never" are a
    team's standing choice (people judge the versions, e.g. in an arena) and say so."""
    if mode not in PROMOTE_MODES:
        raise ValueError(f"unknown promotion mode {mode!r}: use one of {', '.join(PROMOTE_MODES)}")
    if mode == "always":
        return {"promote": True, "by": "TUNE_PROMOTE=always", "reasons": []}
    if mode == "never":
        return {"promote": False, "by": "TUNE_PROMOTE=never", "reasons": ["TUNE_PROMOTE=never: activate it by hand"]}
    if not evaluation or "promotion" not in evaluation:
        reason = (evaluation or {}).get("error") or "there is no evaluation"
        return {"promote": False, "by": "the evaluation", "reasons": [reason]}
    verdict = evaluation["promotion"]
    return {"promote": bool(verdict["promote"]), "by": "the evaluation", "reasons": list(verdict["reasons"])}


@dataclass(frozen=True)
class RoundConfig:
    tune: object                  # model.tuning.TuneConfig
    generation: object            # model.generation.types.GenerationConfig (local) for the evaluation's answers
    judge: object                 # model.reward.config.TrainConfig of the judge trained on the held-out pairs
    holdout: float = 0.2
    eval_prompts: int = 64
    promote: str = "if-better"
    keep_versions: int = 5        # generator versions kept (the current one never goes)


def run_round(pairs: list[PreferencePair], project: int | str, store: VersionStore, configured: str,
              config: RoundConfig, work_dir, provenance: dict | None = None,
              progress: Progress | None = None) -> dict:
    """Tune the project's current generator version (`configured`, the GENERATOR_MODEL, when it has none) on
    `pairs` into a new version of `store` (a GENERATOR VersionStore), evaluate it, and activate it when
    `decide` says so. Returns the round's outcome; raises model.tuning.TuningError on bad input or a base that
    cannot be tuned, before any version exists."""
    report = progress or (lambda fraction, message: None)
    started_from = store.current(project)
    base = str(store.path(project, started_from)) if started_from else configured
    usable = usable_pairs(pairs)
    tune_pairs, held = stable_split(usable, config.holdout)
    outcome = {"started_from": started_from or configured, "pairs": len(pairs), "tuning_pairs": len(tune_pairs),
               "held_out_pairs": len(held)}
    if not tune_pairs:
        reason = ("no usable pair (a prompt and two different, non-empty answers)" if not usable else
                  f"every one of the {len(usable)} usable pairs' prompts is held out (TUNE_HOLDOUT)")
        return {**outcome, "status": "skipped", "reason": reason}
    record = {"base_version": started_from, "holdout": config.holdout, "held_out_pairs": len(held),
              **(provenance or {})}
    with store.new_version(project) as pending:
        tuned = tune(tune_pairs, base, pending.path, config.tune, lambda f, m: report(0.7 * f, f"tuning: {m}"),
                     provenance=record)
        evaluation = _evaluate(base, pending.path, held, config, Path(work_dir),
                               lambda f, m: report(0.7 + 0.28 * f, f"evaluating: {m}"))
        decision = decide(evaluation, config.promote)
        evaluation = {**{k: v for k, v in evaluation.items() if k not in ("base", "new")},  # new: a temp path
                      "base_version": started_from, "base_model": base, "decision": decision}
        (pending.path / EVALUATION_FILE).write_text(json.dumps(evaluation, indent=2, default=str))
    if decision["promote"]:
        store.activate(project, pending.name)
    pruned = store.prune(project, config.keep_versions)
    report(1.0, f"{pending.name} " + ("is current" if decision["promote"] else "kept, not promoted"))
    log.info("project %s: generator %s tuned from %s on %s pairs; %s", project, pending.name,
             started_from or configured, len(tune_pairs),
             "promoted" if decision["promote"] else "not promoted: " + "; ".join(decision["reasons"]))
    return {**outcome, "status": "done", "version": pending.name, "promoted": decision["promote"],
            "reasons": decision["reasons"], "steps": tuned.get("steps"),
            "stopped_by_budget": tuned.get("stopped_by_budget"), "lc_win_rate": evaluation.get("lc_win_rate"),
            "lc_win_rate_ci": evaluation.get("lc_win_rate_ci"), "pruned": pruned}


def _evaluate(base: str, new: Path, held: list[PreferencePair], config: RoundConfig, work_dir: Path,
              progress: Progress) -> dict:
    """The comparison report of `new` against `base` on the held-out prompts, or {"error"} when there is
    nothing to compare on (no held-out pair, no prompt both versions answered)."""
    if not held:
        return {"error": "no held-out pair to judge on: the project needs more prompts (or a larger TUNE_HOLDOUT)"}
    if not held_out(held, base, str(new)):
        return {"error": "the version it was tuned from was tuned on every held-out prompt"}
    return evaluate(base, str(new), held, config.generation, config.judge, work_dir,
                    max_prompts=config.eval_prompts, progress=progress)
