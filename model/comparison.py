"""Two generator versions answer the same held-out prompts and a reward model judges each pair of answers.

The judge must not have seen the pairs the policy was tuned on, or it grades the policy on its own homework:
`split_by_prompt` keeps whole prompts on one side, `held_out` drops every pair whose prompt a version was
tuned on (tuning.json records their hashes), and `evaluate` trains the judge on the held-out pairs only and
asks both versions to answer those pairs' prompts, which neither was tuned on.
"""

from __future__ import annotations

import dataclasses
import gc
import random
from pathlib import Path
from typing import Callable

from model.pairs import PreferencePair
from model.stats import wilson_interval
from model.tuning import prompt_hash, read_tuning
from model.winrate import judge_note, promotion, win_rate_report

Progress = Callable[[float, str], None]
ANSWERS_PER_PROMPT = 2  # comparisons per prompt: the generator samples two answers anyway


def split_by_prompt(pairs: list[PreferencePair], holdout: float, seed: int = 0):
    """(tuning pairs, held-out pairs): a `holdout` share of the distinct prompts, with all their pairs, is
    held out."""
    if not 0 <= holdout < 1:
        raise ValueError(f"the held-out share must be at least 0 and below 1, got {holdout}")
    prompts = sorted({p.prompt for p in pairs})
    random.Random(seed).shuffle(prompts)
    held = set(prompts[:round(len(prompts) * holdout)])
    return [p for p in pairs if p.prompt not in held], [p for p in pairs if p.prompt in held]


def held_out(pairs: list[PreferencePair], *models: str) -> list[PreferencePair]:
    """The pairs whose prompt none of `models` (version folders) was tuned on."""
    seen = set()
    for model in models:
        seen.update(read_tuning(model).get("prompt_hashes", []))
    return [p for p in pairs if prompt_hash(p.prompt) not in seen]


def answer(model: str, prompts: list, generation, progress: Progress | None = None) -> list[tuple | None]:
    """Each prompt's sampled answers from `model` (None where generation failed); the model is freed after."""
    from model.generation import load_generator

    generator = load_generator(dataclasses.replace(generation, model=model, model_b=None))
    done = (lambda d, t: progress(d / max(t, 1), f"{d}/{t} prompts")) if progress else None
    results = generator.generate(prompts, progress=done, candidates=ANSWERS_PER_PROMPT)
    del generator
    gc.collect()
    return [r.answers for r in results]


def judge_accuracy(judge, pairs: list[PreferencePair]) -> dict:
    """How often `judge` scores the chosen answer of human pairs above the rejected one, with its interval."""
    from model.evaluation import margin_metrics

    rewards = judge.rewards([p.prompt for p in pairs] * 2, [p.chosen for p in pairs] + [p.rejected for p in pairs])
    m = margin_metrics([c - r for c, r in zip(rewards[:len(pairs)], rewards[len(pairs):])])
    return {"accuracy": m["accuracy"], "accuracy_ci": [m["ci_low"], m["ci_high"]], "accuracy_pairs": m["n"]}


def train_judge(pairs: list[PreferencePair], config, out_dir, progress: Progress | None = None):
    """(judge, description): a reward model trained on `pairs` into `out_dir`; its accuracy is measured on its
    own held-out split of them."""
    from model.reward.model import RewardModel
    from model.reward.train import train_reward_model

    metrics = train_reward_model(pairs, config, Path(out_dir), progress=progress)
    accuracy, n = metrics["val_accuracy"], metrics["n_val"]
    # Wilson's interval, not the bootstrap's: resampling two pairs the judge both got right gives
    # [100%, 100%], and promotion would trust a judge tested on two pairs.
    interval = list(wilson_interval(accuracy * n, n)) if accuracy is not None and n else None
    info = {"judge": f"reward model ({config.mode} mode, {config.base_model}) trained on {metrics['n_train']} "
                     "held-out pairs", "path": str(out_dir), "trained_pairs": metrics["n_train"],
            "accuracy": accuracy, "accuracy_ci": interval, "accuracy_pairs": n}
    return RewardModel.load(out_dir), info


def compare_answers(prompts: list, answers_base: list, answers_new: list, judge, judge_info: dict,
                    n_boot: int = 2000, seed: int = 0) -> dict:
    """The win-rate report of the new answers over the base answers (lists of per-prompt answer tuples, None
    where generation failed), as `judge` (anything with `rewards(prompts, answers)`) scores them."""
    rows = [(i, a, b) for i, (base, new) in enumerate(zip(answers_base, answers_new)) if base and new
            for a, b in zip(base, new)]
    if not rows:
        raise ValueError("no prompt was answered by both versions")
    texts = [prompts[i] if isinstance(prompts[i], str) else _text(prompts[i]) for i, _, _ in rows]
    rewards = judge.rewards(texts * 2, [b for _, _, b in rows] + [a for _, a, _ in rows])
    n = len(rows)
    report = win_rate_report([i for i, _, _ in rows], rewards[:n], rewards[n:], [len(b) for _, _, b in rows],
                             [len(a) for _, a, _ in rows], n_boot=n_boot, seed=seed)
    report["failed_prompts"] = sum(1 for base, new in zip(answers_base, answers_new) if not (base and new))
    report["judge"] = {**judge_info, "note": judge_note(judge_info.get("accuracy"))}
    report["promotion"] = promotion(report, judge_info.get("accuracy_ci"))
    return report


def _text(prompt) -> str:
    from model.conversation import prompt_text

    return prompt_text(prompt)


def evaluate(base: str, new: str, pairs: list[PreferencePair], generation, judge_config, work_dir,
             max_prompts: int = 512, judge=None, judge_info: dict | None = None, seed: int = 0,
             progress: Progress | None = None) -> dict:
    """Compare `new` against `base` on the prompts of `pairs` that neither was tuned on. Without `judge`, one
    is trained (`judge_config`, a reward TrainConfig) on those held-out pairs into `work_dir`/judge; a given
    judge's accuracy is measured on them instead (inflated if it was trained on them)."""
    report = progress or (lambda fraction, message: None)
    pairs = held_out(pairs, base, new)
    if not pairs:
        raise ValueError("every prompt in the pairs was tuned on: hold some out (tune --holdout) or compare "
                         "on other pairs")
    if judge is None:
        folder = Path(work_dir) / "judge"
        folder.mkdir(parents=True, exist_ok=True)
        judge, judge_info = train_judge(pairs, judge_config, folder,
                                        lambda f, m: report(0.3 * f, f"judge: {m}"))
    else:
        judge_info = {**(judge_info or {}), **judge_accuracy(judge, pairs)}
    prompts = sorted({p.prompt for p in pairs})
    random.Random(seed).shuffle(prompts)
    prompts = prompts[:max_prompts]
    answers_base = answer(base, prompts, generation, lambda f, m: report(0.3 + 0.3 * f, f"base answers: {m}"))
    answers_new = answer(new, prompts, generation, lambda f, m: report(0.6 + 0.3 * f, f"new answers: {m}"))
    report(0.92, "judging")
    result = compare_answers(prompts, answers_base, answers_new, judge, judge_info, seed=seed)
    result.update(base=str(base), new=str(new), held_out_pairs=len(pairs))
    report(1.0, "done")
    return result
