"""Fast mode's feature cache: the frozen encoder's features per (prompt, answer) (a BERT's first-token hidden
state, or a causal LM's middle-layer answer mean: model/reward/decoder.py), computed once and kept on disk, so
a retrain or a rescoring is arithmetic on cached vectors, not a forward pass."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
import uuid
from pathlib import Path

MAX_SHARDS = 16  # feature-cache shards on disk before they are merged into one

log = logging.getLogger(__name__)
_open: dict[tuple, "FeatureCache"] = {}
_open_lock = threading.Lock()


class FeatureCache:
    """Features of a frozen encoder, keyed by sha256(prompt, answer).

    On disk (optional) under <dir>/<model key>/, where the model key hashes the base model, its weight
    files' size and mtime, max_length and pooling. Each run appends one shard file written to a temp name and
    renamed, so concurrent workers never read a partial shard and never overwrite each other.
    """

    def __init__(self, base_path: str, max_length: int, pooling: str, folder: Path | None):
        self.features: dict[str, object] = {}
        self.folder = None
        self._loaded: set[str] = set()  # shard files read so far
        if folder is not None:
            self.folder = Path(folder) / _model_key(base_path, f"{max_length}|{pooling}")
            self.reload()

    @classmethod
    def open(cls, base_path: str, max_length: int, pooling: str, folder: Path | None) -> "FeatureCache":
        """The process's one cache for these settings, with the shards other processes wrote since it was
        last opened: a worker keeps its features in memory between jobs instead of reading them all again."""
        if folder is None:
            return cls(base_path, max_length, pooling, None)
        with _open_lock:
            key = (str(folder), _model_key(base_path, f"{max_length}|{pooling}"))
            cache = _open.get(key)
            if cache is None:
                cache = _open[key] = cls(base_path, max_length, pooling, folder)
            else:
                cache.reload()
            return cache

    def reload(self) -> None:
        for shard in sorted(self.folder.glob("shard-*.pt")) if self.folder and self.folder.is_dir() else []:
            if shard.name not in self._loaded:
                self._load_shard(shard)

    def _load_shard(self, shard: Path) -> None:
        import torch

        try:
            data = torch.load(shard, weights_only=True)
        except FileNotFoundError:  # merged into another shard by a compaction meanwhile
            return
        except (OSError, RuntimeError, EOFError) as exc:
            log.warning("feature cache shard %s is unreadable (%s); its features will be computed again", shard, exc)
            return
        self.features.update(zip(data["keys"], data["features"]))
        self._loaded.add(shard.name)

    @staticmethod
    def key(prompt: str, answer: str) -> str:
        return hashlib.sha256(f"{len(prompt)}:{prompt}{answer}".encode()).hexdigest()

    def cached(self, keys) -> tuple[list[str], object]:
        """(the keys, once each, whose features are cached; their features stacked, or None if none is)."""
        import torch

        present = [k for k in dict.fromkeys(keys) if k in self.features]
        return present, torch.stack([self.features[k] for k in present]) if present else None

    def compute(self, model, tokenizer, prompts, answers, max_length, batch_size, progress) -> object:
        """Features for every (prompt, answer) under a BERT-style encoder (`model`'s first-token state, the
        mean where it has the pooling layer); only the missing ones go through the encoder."""
        from model.reward.model import encode_pairs
        from model.reward.pooling import first_token_state

        def encode(batch_prompts, batch_answers):
            enc = encode_pairs(tokenizer, batch_prompts, batch_answers, max_length)
            return first_token_state(model.base_model, enc.to(model.device))

        return self.compute_with(encode, prompts, answers, batch_size, progress)

    def compute_with(self, encode, prompts, answers, batch_size, progress, order=None) -> object:
        """Features for every (prompt, answer), `encode(prompts, answers)` giving a batch's (n, width) tensor;
        only the missing ones are encoded, in batches by `order` (a key of the index; default: shortest text
        first), and written to a new shard. Returns (features in the order given, how many were encoded)."""
        import torch

        keys = [self.key(p, a) for p, a in zip(prompts, answers)]
        todo = sorted({k: i for i, k in enumerate(keys) if k not in self.features}.values(),
                      key=order or (lambda i: len(prompts[i]) + len(answers[i])))
        new_keys, new_feats = [], []
        with torch.inference_mode():
            for start in range(0, len(todo), batch_size):
                idx = todo[start:start + batch_size]
                hidden = encode([prompts[i] for i in idx], [answers[i] for i in idx]).float().cpu().clone()
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
        name = f"shard-{time.time_ns()}-{uuid.uuid4().hex[:8]}.pt"
        os.replace(tmp, self.folder / name)
        self._loaded.add(name)

    def _compact(self) -> None:
        """A retrain per annotation adds a shard per annotation: past MAX_SHARDS, merge them into one.
        The merged shard is in place before any shard it holds is deleted, and a shard this process has not
        read (another process wrote it meanwhile) is not touched, so no feature is ever lost (at worst some
        are stored twice)."""
        import torch

        shards = sorted(self.folder.glob("shard-*.pt"))
        if len(shards) <= MAX_SHARDS:
            return
        keys = list(self.features)
        self._write_shard(keys, torch.stack([self.features[k] for k in keys]))
        for shard in shards:
            if shard.name in self._loaded:
                shard.unlink(missing_ok=True)
                self._loaded.discard(shard.name)


def _model_key(base_path: str, variant: str) -> str:
    parts = [base_path, variant]
    folder = Path(base_path)
    if folder.is_dir():  # a changed checkpoint at the same path must not reuse old features
        for f in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
            st = f.stat()
            parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]

