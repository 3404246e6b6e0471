"""Fast mode's feature cache: the frozen encoder's first-token hidden state per (prompt, answer), computed
once and kept on disk, so a retrain or a rescoring is arithmetic on cached vectors, not a forward pass."""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from pathlib import Path

from model.reward.model import encode_pairs

MAX_SHARDS = 16  # feature-cache shards on disk before they are merged into one


class FeatureCache:
    """First-token hidden states of a frozen encoder, keyed by sha256(prompt, answer).

    On disk (optional) under <dir>/<model key>/, where the model key hashes the base model, its weight
    files' size and mtime, max_length and pooling. Each run appends one shard file written to a temp name and
    renamed, so concurrent workers never read a partial shard and never overwrite each other.
    """

    def __init__(self, base_path: str, max_length: int, pooling: str, folder: Path | None):
        self.features: dict[str, object] = {}
        self.folder = None
        if folder is not None:
            self.folder = Path(folder) / _model_key(base_path, f"{max_length}|{pooling}")
            for shard in sorted(self.folder.glob("shard-*.pt")):
                self._load_shard(shard)

    def _load_shard(self, shard: Path) -> None:
        import torch

        try:
            data = torch.load(shard, weights_only=True)
        except (OSError, RuntimeError, EOFError):  # unreadable shard: recompute those features
            return
        self.features.update(zip(data["keys"], data["features"]))

    @staticmethod
    def key(prompt: str, answer: str) -> str:
        return hashlib.sha256(f"{len(prompt)}:{prompt}{answer}".encode()).hexdigest()

    def compute(self, model, tokenizer, prompts, answers, max_length, batch_size, progress) -> object:
        """Features for every (prompt, answer); only the missing ones go through the encoder."""
        import torch

        keys = [self.key(p, a) for p, a in zip(prompts, answers)]
        todo = sorted({k: i for i, k in enumerate(keys) if k not in self.features}.values(),
                      key=lambda i: len(prompts[i]) + len(answers[i]))
        new_keys, new_feats = [], []
        encoder = model.base_model
        with torch.inference_mode():
            for start in range(0, len(todo), batch_size):
                idx = todo[start:start + batch_size]
                enc = encode_pairs(tokenizer, [prompts[i] for i in idx], [answers[i] for i in idx], max_length)
                hidden = encoder(**enc.to(model.device)).last_hidden_state[:, 0].float().cpu().clone()
                for i, h in zip(idx, hidden):
                    self.features[keys[i]] = h
                    new_keys.append(keys[i])
                    new_feats.append(h)
                progress(min(start + batch_size, len(todo)) / len(todo), f"encoded {start + len(idx)}/{len(todo)}")
        if new_keys and self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._write_shard(new_keys, torch.stack(new_feats))
            self._compact()
        return torch.stack([self.features[k] for k in keys]), len(todo)

    def _write_shard(self, keys: list[str], features) -> None:
        import torch

        tmp = self.folder / f"tmp-{uuid.uuid4().hex}.part"
        with open(tmp, "wb") as f:
            torch.save({"keys": keys, "features": features}, f)
        os.replace(tmp, self.folder / f"shard-{time.time_ns()}-{uuid.uuid4().hex[:8]}.pt")

    def _compact(self) -> None:
        """A retrain per annotation adds a shard per annotation: past MAX_SHARDS, merge them into one.
        The merged shard is in place before any shard it holds is deleted, and a shard another process
        writes meanwhile is not touched, so no feature is ever lost (at worst some are stored twice)."""
        import torch

        shards = sorted(self.folder.glob("shard-*.pt"))
        if len(shards) <= MAX_SHARDS:
            return
        keys = list(self.features)
        self._write_shard(keys, torch.stack([self.features[k] for k in keys]))
        for shard in shards:
            shard.unlink(missing_ok=True)


def _model_key(base_path: str, variant: str) -> str:
    parts = [base_path, variant]
    folder = Path(base_path)
    if folder.is_dir():  # a changed checkpoint at the same path must not reuse old features
        for f in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
            st = f.stat()
            parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]

