"""The TRL side of generator tuning: DPOTrainer over packed rows (model/tuning_packed.py; TRL's own rows for
an attention that takes no 4D mask) with a LoRA adapter on every linear layer (of the top `lora_layers`
layers), a clock that stops at the time budget, progress, and the merge of the adapter into the weights."""

from __future__ import annotations

import math
import time
from contextlib import contextmanager

from model.tuning import Progress, TuneConfig, TuningError

# TRL scores tokens in tiles of TOKEN_CHUNK_SIZE positions x 32k vocabulary entries. Its CUDA path runs them
# in a Triton kernel; elsewhere torch ops make several float32 copies of each tile (4096 x 32768 x 4 bytes =
# 512 MB apiece), which took a CPU step past 8 GiB. Smaller tiles do the same arithmetic.
CPU_TOKEN_CHUNK = 256


@contextmanager
def _cpu_tiles(device: str):
    import trl.kernels.chunked_logprob as chunked

    if device == "cuda" or not hasattr(chunked, "TOKEN_CHUNK_SIZE"):
        yield
        return
    saved = chunked.TOKEN_CHUNK_SIZE
    chunked.TOKEN_CHUNK_SIZE = min(saved, CPU_TOKEN_CHUNK)
    try:
        yield
    finally:
        chunked.TOKEN_CHUNK_SIZE = saved


@contextmanager
def _quiet_datasets():
    from datasets.utils import logging as ds_logging

    was = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            ds_logging.enable_progress_bar()


def _callback(started: float, budget: float | None, report: Progress):
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        """Progress per optimizer step, and a stop before the step that would cross the budget (judged
        by the last step's duration)."""

        def __init__(self):
            self.last = time.monotonic()
            self.stopped = False
            self.logs: list[dict] = []

        def on_train_begin(self, args, state, control, **kwargs):
            self.last = time.monotonic()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.logs.append(dict(logs))

        def on_step_end(self, args, state, control, **kwargs):
            now = time.monotonic()
            step_seconds, self.last = now - self.last, now
            if budget is not None and state.global_step < state.max_steps \
                    and now - started + step_seconds > budget:
                control.should_training_stop = True
                self.stopped = True
            last = self.logs[-1] if self.logs else {}
            note = f", loss {last['loss']:.3f}" if "loss" in last else ""
            report(0.05 + 0.9 * state.global_step / max(state.max_steps, 1),
                   f"step {state.global_step}/{state.max_steps}{note}, {now - started:.0f} s")

    return Clock()


def _summary(logs: list[dict], steps: int) -> dict:
    """Training figures averaged over the last quarter of the steps (single steps are noisy)."""
    tail = logs[-max(1, math.ceil(len(logs) / 4)):]

    def mean(key):
        values = [h[key] for h in tail if isinstance(h.get(key), (int, float))]
        return round(sum(values) / len(values), 4) if values else None

    return {"train_loss": mean("loss"), "reward_accuracy": mean("rewards/accuracies"),
            "reward_margin": mean("rewards/margins"), "history": [
                {k: h.get(k) for k in ("step", "epoch", "loss", "rewards/accuracies", "rewards/margins")}
                for h in logs]}


def train_dpo(model, tok, rows: list[dict], config: TuneConfig, micro: int, lora_layers: int, mixed: str,
              device: str, scratch: str, started: float, report: Progress):
    """Train a LoRA adapter on the top `lora_layers` decoder layers with DPO on `rows` (TRL preference rows, in
    the order to train on); return the merged fp32 model on the CPU and the training figures."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers.trainer_callback import PrinterCallback
    from trl import DPOConfig, DPOTrainer

    from model.tuning_packed import PackedDPOTrainer, PairRows, packs

    args = DPOConfig(
        output_dir=scratch, per_device_train_batch_size=micro,
        gradient_accumulation_steps=math.ceil(config.batch_size / micro), num_train_epochs=config.epochs,
        learning_rate=config.learning_rate, warmup_steps=0.1, beta=config.beta, max_length=config.max_length,
        bf16=mixed == "bf16", fp16=mixed == "fp16", use_cpu=device == "cpu", activation_checkpointing=False,
        train_sampling_strategy="sequential",  # rows come length-grouped and shuffled (tuning.length_grouped_order)
        save_strategy="no", report_to=[], logging_steps=1, disable_tqdm=True, seed=config.seed)
    n_layers = model.config.num_hidden_layers
    top = list(range(n_layers - lora_layers, n_layers)) if lora_layers < n_layers else None
    # peft takes a layer selection only with module names: every linear layer's, as "all-linear" picks them
    linears = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules()
                      if isinstance(m, torch.nn.Linear) and name != "lm_head"}) if top else "all-linear"
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha or 2 * config.lora_r, lora_dropout=0.0,
                      target_modules=linears, task_type="CAUSAL_LM", layers_to_transform=top)
    clock = _callback(started, config.time_budget, report)
    report(0.03, f"preparing {len(rows)} pairs")
    with _quiet_datasets():
        common = dict(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                      peft_config=lora, callbacks=[clock])
        if config.packed and packs(model):
            trainer = PackedDPOTrainer(**common, data_collator=PairRows(config.max_length, tok.pad_token_id),
                                       first_adapted=top[0] if top else 0)
        else:
            trainer = DPOTrainer(**common)
    trainer.remove_callback(PrinterCallback)  # it prints every log line to stdout
    if len(trainer.train_dataset) == 0:
        raise TuningError(f"every prompt is longer than max_length ({config.max_length} tokens); raise it")
    with _cpu_tiles(device):
        trainer.train()
    steps = trainer.state.global_step
    if steps == 0:
        raise TuningError("no training step finished within the time budget")
    merged = trainer.model.merge_and_unload().to("cpu").float().eval()
    return merged, {"steps": steps, "planned_steps": trainer.state.max_steps, "learning_rate": trainer.args.learning_rate,
                    "packed_rows": isinstance(trainer, PackedDPOTrainer),
                    "epochs_done": round(trainer.state.epoch or 0.0, 3), "stopped_by_budget": clock.stopped,
                    "pairs_trained": len(trainer.train_dataset), **_summary(clock.logs, steps)}
