"""All configuration, read once from the environment, validated, and passed down as one object.

Label Studio's own variable names are used where they exist (LABEL_STUDIO_URL, LABEL_STUDIO_API_KEY,
MODEL_DIR, BASIC_AUTH_USER, BASIC_AUTH_PASS, WORKERS, THREADS, LOG_LEVEL, PORT). `OPTIONS` is the single
list of every variable: the README's table and the docker `.env.example` are checked against it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping
from urllib.parse import urlparse

from model.generation.types import MAX_CANDIDATES


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


@dataclass(frozen=True)
class Option:
    name: str
    default: str | None
    help: str
    secret: bool = False


OPTIONS: tuple[Option, ...] = (
    # Server
    Option("HOST", "0.0.0.0", "Address the HTTP server binds to."),
    Option("PORT", "9090", "Port the HTTP server listens on."),
    Option("WORKERS", "2", "gunicorn worker processes."),
    Option("THREADS", "4", "Threads per gunicorn worker."),
    Option("LOG_LEVEL", "INFO", "DEBUG, INFO, WARNING or ERROR."),
    Option("BASIC_AUTH_USER", None, "If set (with BASIC_AUTH_PASS), every route requires HTTP basic auth."),
    Option("BASIC_AUTH_PASS", None, "Password for basic auth.", secret=True),
    Option("MAX_REQUEST_BYTES", str(32 * 1024 * 1024), "Larger request bodies get 413."),
    # Label Studio
    Option("LABEL_STUDIO_URL", None,
           "Where jobs reach Label Studio, e.g. http://label-studio:8080. Unset: the hostname LS sends in /setup."),
    Option("LABEL_STUDIO_API_KEY", None,
           "Legacy token or personal access token. Unset: the project creator's legacy token from /setup.",
           secret=True),
    Option("LABEL_STUDIO_ALLOW_PRIVATE_HOSTS", "false",
           "Without LABEL_STUDIO_URL, also trust a /setup hostname on a private or loopback address."),
    # Queue
    Option("REDIS_URL", "redis://localhost:6379/0", "Redis for the RQ job queues."),
    Option("QUEUE_PREFIX", "rlhf", "Prefix of the RQ queue names and Redis keys, to share one Redis."),
    Option("JOB_TIMEOUT", "3600", "Seconds before a generation or training job is killed."),
    Option("JOB_RETRIES", "3", "Retries (with backoff) for a job that fails, e.g. Label Studio unreachable."),
    Option("RECONCILE_HOURS", "24", "Hours between full re-reads of a project's annotations and of its unlabelled "
           "tasks for the prediction refresh (between them, only what changed is read)."),
    Option("PREDICTION_IMPORT_BATCH", "5000", "Predictions per bulk import request to Label Studio. Each import "
           "costs Label Studio time in proportion to the predictions the project already holds, so fewer, larger "
           "imports are faster (BENCHMARKS.md); lower it if Label Studio times out on them."),
    # Storage
    Option("MODEL_DIR", "./rlhf-models", "Reward-model versions, generator caches and feature caches."),
    Option("KEEP_VERSIONS", "5", "Reward-model versions, and generator versions, kept per project (the current "
           "one is never deleted)."),
    # Generation
    Option("GENERATOR", "local", "local (transformers) or openai (an OpenAI-compatible server)."),
    Option("GENERATOR_MODEL", "smollm2",
           "smollm2 (the packaged SmolLM2-135M-Instruct), a Hugging Face id, a local folder or a .gguf file; "
           "for GENERATOR=openai, the served model name."),
    Option("GENERATOR_B_MODEL", None, "Optional second model: answer B comes from it (compare two checkpoints; "
           "needs CANDIDATES=2)."),
    Option("CANDIDATES", "2", "Answers generated per prompt, 2 to 26: a Ranker project (label_config_ranker.xml) "
           "shows them all, e.g. 4; a Pairwise project shows two."),
    Option("OPENAI_BASE_URL", None, "Base URL of the OpenAI-compatible server, e.g. http://vllm:8000/v1."),
    Option("OPENAI_API_KEY", None, "API key of that server.", secret=True),
    Option("SYSTEM_PROMPT", None, "System message the generator starts each conversation with, unless the prompt "
           "has its own (chat models and OpenAI-compatible servers; unset: the model's default)."),
    Option("TEMPERATURE", "0.8", "Sampling temperature."),
    Option("TOP_P", "0.95", "Nucleus sampling threshold."),
    Option("MAX_NEW_TOKENS", "128", "Longest answer, in tokens."),
    Option("GENERATION_SEED", None, "Seed for reproducible answers (unset: random)."),
    Option("GENERATION_BATCH_SIZE", "64", "Prompts per generation batch (fewer when prompts are long)."),
    Option("TORCH_DTYPE", "auto", "auto (bf16 on CPUs that support it, fp16 on GPU), float32, bfloat16, float16."),
    Option("TORCH_THREADS", None, "torch intra-op threads (unset: torch's default)."),
    # Reward model
    Option("REWARD_BASE_MODEL", "minilm",
           "minilm (the packaged all-MiniLM-L6-v2), a Hugging Face id or a local folder; or a causal LM read frozen "
           "at its middle layer in fast mode: smollm2 (the packaged generator), a .gguf file or a local folder."),
    Option("TRAIN_MODE", "fast", "fast (frozen encoder, cached features, seconds) or full (fine-tune, minutes)."),
    Option("TRAIN_MEMBERS", "1", "full mode: fine-tunes from one start whose weights are averaged (WARM); N times the training time."),
    Option("REWARD_MAX_LENGTH", None, "Tokens of prompt+answer the reward model reads (unset: 512 in fast mode, "
                                      "256 in full mode)."),
    Option("REWARD_POOLING", "mean", "mean (an added mean-pooling layer, for sentence encoders) or cls (first token)."),
    Option("MIN_NEW_ANNOTATIONS", "1", "Annotation events retrain once this many new annotations exist."),
    Option("PREANNOTATE", "trained", "never, trained (once held-out accuracy >= PREANNOTATE_MIN_ACCURACY) or always."),
    Option("PREANNOTATE_MIN_ACCURACY", "0.6", "Held-out accuracy a version needs before its guesses are shown."),
    # Generator tuning
    Option("TUNE_EVERY", "0", "Queue a generator tuning round (the tune job) whenever a project has this many more "
           "annotations than at its last round; 0: only when asked (`rlhf-backend tune --project N`)."),
    Option("TUNE_HOLDOUT", "0.2", "Share of the distinct prompts a tuning round never tunes on: they judge the new "
           "version (by prompt hash, so the same prompts stay held out in every round)."),
    Option("TUNE_EVAL_PROMPTS", "64", "Held-out prompts both generator versions answer in a tuning round's "
           "evaluation (more: a tighter win-rate interval, longer rounds)."),
    Option("TUNE_TIME_BUDGET", "1200", "Seconds of DPO training per tuning round (at most 60% of JOB_TIMEOUT: "
           "the round also loads, evaluates and saves); training stops there and keeps what it learned."),
    Option("TUNE_LORA_LAYERS", None, "Decoder layers, from the top, that carry the tuning adapter (unset: a third of "
           "them on a CPU, every layer on a GPU; a number at or above their count: every layer, a round in about "
           "twice the time and memory of a third, at a third of the learning rate; BENCHMARKS.md)."),
    Option("TUNE_PROMOTE", "if-better", "if-better (serve a tuned version only when its evaluation says promote), "
           "always (serve every tuned version, e.g. when people judge it) or never (activate by hand)."),
)

_BY_NAME = {o.name: o for o in OPTIONS}
SECRET_NAMES = frozenset(o.name for o in OPTIONS if o.secret)


@dataclass(frozen=True)
class Settings:
    host: str
    port: int
    workers: int
    threads: int
    log_level: str
    basic_auth_user: str | None
    basic_auth_pass: str | None = field(repr=False)
    max_request_bytes: int
    label_studio_url: str | None
    label_studio_api_key: str | None = field(repr=False)
    label_studio_allow_private_hosts: bool
    redis_url: str = field(repr=False)  # may carry a password
    queue_prefix: str
    job_timeout: int
    job_retries: int
    reconcile_hours: float
    prediction_import_batch: int
    model_dir: Path
    keep_versions: int
    generator: str
    generator_model: str
    generator_b_model: str | None
    candidates: int
    openai_base_url: str | None
    openai_api_key: str | None = field(repr=False)
    system_prompt: str | None
    temperature: float
    top_p: float
    max_new_tokens: int
    generation_seed: int | None
    generation_batch_size: int
    torch_dtype: str
    torch_threads: int | None
    reward_base_model: str
    train_mode: str
    train_members: int
    reward_max_length: int | None
    reward_pooling: str
    min_new_annotations: int
    preannotate: str
    preannotate_min_accuracy: float
    tune_every: int
    tune_holdout: float
    tune_eval_prompts: int
    tune_time_budget: int
    tune_lora_layers: int | None
    tune_promote: str

    @property
    def auth_enabled(self) -> bool:
        return bool(self.basic_auth_user)

    @property
    def reconcile_seconds(self) -> float:
        return self.reconcile_hours * 3600

    def secrets(self) -> list[str]:
        """Every secret value in force, for log redaction."""
        values = [self.basic_auth_pass, self.label_studio_api_key, self.openai_api_key,
                  urlparse(self.redis_url).password]
        return [v for v in values if v]


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate every option; raise ConfigError naming the first bad variable."""
    env = os.environ if env is None else env

    def raw(name: str) -> str | None:
        value = env.get(name)
        if value is None or value.strip() == "":
            return _BY_NAME[name].default
        return value.strip()

    def integer(name: str, minimum: int = 0) -> int:
        value = raw(name)
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be an integer, got {value!r}") from None
        if number < minimum:
            raise ConfigError(f"{name} must be at least {minimum}, got {number}")
        return number

    def optional_int(name: str, minimum: int = 0) -> int | None:
        return None if raw(name) is None else integer(name, minimum)

    def number(name: str, low: float, high: float) -> float:
        value = raw(name)
        try:
            result = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be a number, got {value!r}") from None
        if not low <= result <= high:
            raise ConfigError(f"{name} must be between {low} and {high}, got {result}")
        return result

    def boolean(name: str) -> bool:
        value = raw(name).lower()
        if value in ("1", "true", "yes", "on"):
            return True
        if value in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name} must be true or false, got {value!r}")

    def choice(name: str, allowed: tuple[str, ...]) -> str:
        value = raw(name).lower()
        if value not in allowed:
            raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        return value

    def url(name: str, schemes: tuple[str, ...] = ("http", "https")) -> str | None:
        value = raw(name)
        if value is None:
            return None
        parsed = urlparse(value)
        if parsed.scheme not in schemes or not parsed.netloc:
            raise ConfigError(f"{name} must be a URL starting with {' or '.join(s + '://' for s in schemes)}")
        return value.rstrip("/")

    user, password = raw("BASIC_AUTH_USER"), raw("BASIC_AUTH_PASS")
    if bool(user) != bool(password):
        raise ConfigError("BASIC_AUTH_USER and BASIC_AUTH_PASS must be set together")
    generator = choice("GENERATOR", ("local", "openai"))
    openai_base_url = url("OPENAI_BASE_URL")
    if generator == "openai" and not openai_base_url:
        raise ConfigError("GENERATOR=openai needs OPENAI_BASE_URL (e.g. http://localhost:8000/v1)")
    candidates = integer("CANDIDATES", 2)
    if candidates > MAX_CANDIDATES:
        raise ConfigError(f"CANDIDATES must be at most {MAX_CANDIDATES}, got {candidates}")
    if candidates != 2 and raw("GENERATOR_B_MODEL"):
        raise ConfigError("GENERATOR_B_MODEL gives answer B beside GENERATOR_MODEL's answer A, so it needs "
                          f"CANDIDATES=2, got {candidates}")
    log_level = raw("LOG_LEVEL").upper()
    if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {log_level!r}")

    return Settings(
        host=raw("HOST"),
        port=integer("PORT", 1),
        workers=integer("WORKERS", 1),
        threads=integer("THREADS", 1),
        log_level=log_level,
        basic_auth_user=user,
        basic_auth_pass=password,
        max_request_bytes=integer("MAX_REQUEST_BYTES", 1024),
        label_studio_url=url("LABEL_STUDIO_URL"),
        label_studio_api_key=raw("LABEL_STUDIO_API_KEY"),
        label_studio_allow_private_hosts=boolean("LABEL_STUDIO_ALLOW_PRIVATE_HOSTS"),
        redis_url=url("REDIS_URL", ("redis", "rediss", "unix")),
        queue_prefix=raw("QUEUE_PREFIX"),
        job_timeout=integer("JOB_TIMEOUT", 10),
        job_retries=integer("JOB_RETRIES", 0),
        reconcile_hours=number("RECONCILE_HOURS", 0.0, 24.0 * 365),
        prediction_import_batch=integer("PREDICTION_IMPORT_BATCH", 1),
        model_dir=Path(raw("MODEL_DIR")).expanduser().resolve(),
        keep_versions=integer("KEEP_VERSIONS", 1),
        generator=generator,
        generator_model=raw("GENERATOR_MODEL"),
        generator_b_model=raw("GENERATOR_B_MODEL"),
        candidates=candidates,
        openai_base_url=openai_base_url,
        openai_api_key=raw("OPENAI_API_KEY"),
        system_prompt=raw("SYSTEM_PROMPT"),
        temperature=number("TEMPERATURE", 0.0, 5.0),
        top_p=number("TOP_P", 0.0, 1.0),
        max_new_tokens=integer("MAX_NEW_TOKENS", 1),
        generation_seed=optional_int("GENERATION_SEED"),
        generation_batch_size=integer("GENERATION_BATCH_SIZE", 1),
        torch_dtype=choice("TORCH_DTYPE", ("auto", "float32", "bfloat16", "float16")),
        torch_threads=optional_int("TORCH_THREADS", 1),
        reward_base_model=raw("REWARD_BASE_MODEL"),
        train_mode=choice("TRAIN_MODE", ("fast", "full")),
        train_members=integer("TRAIN_MEMBERS", 1),
        reward_max_length=optional_int("REWARD_MAX_LENGTH", 16),
        reward_pooling=choice("REWARD_POOLING", ("mean", "cls")),
        min_new_annotations=integer("MIN_NEW_ANNOTATIONS", 1),
        preannotate=choice("PREANNOTATE", ("never", "trained", "always")),
        preannotate_min_accuracy=number("PREANNOTATE_MIN_ACCURACY", 0.0, 1.0),
        tune_every=integer("TUNE_EVERY", 0),
        tune_holdout=number("TUNE_HOLDOUT", 0.0, 0.9),
        tune_eval_prompts=integer("TUNE_EVAL_PROMPTS", 1),
        tune_time_budget=integer("TUNE_TIME_BUDGET", 1),
        tune_lora_layers=optional_int("TUNE_LORA_LAYERS", 1),
        tune_promote=choice("TUNE_PROMOTE", ("if-better", "always", "never")),
    )


def generation_config(settings: Settings):
    """The generator's own settings (model/ never reads the environment)."""
    from model.generation.types import GenerationConfig

    return GenerationConfig(
        backend=settings.generator, model=settings.generator_model, model_b=settings.generator_b_model,
        base_url=settings.openai_base_url, api_key=settings.openai_api_key, system_prompt=settings.system_prompt,
        temperature=settings.temperature, top_p=settings.top_p, max_new_tokens=settings.max_new_tokens,
        seed=settings.generation_seed, batch_size=settings.generation_batch_size, dtype=settings.torch_dtype,
        threads=settings.torch_threads, cache_dir=settings.model_dir / "generator-cache",
        candidates=settings.candidates)


def tuning_config(settings: Settings):
    """A worker's tuning round's DPO settings: TuneConfig's defaults, the generator's system prompt and threads,
    TUNE_LORA_LAYERS, and TUNE_TIME_BUDGET within 60% of JOB_TIMEOUT."""
    from model.tuning import TuneConfig

    return TuneConfig(time_budget=min(settings.tune_time_budget, 0.6 * settings.job_timeout),
                      lora_layers=settings.tune_lora_layers,
                      system_prompt=settings.system_prompt, threads=settings.torch_threads,
                      cache_dir=settings.model_dir / "generator-cache")


def train_config(settings: Settings, **overrides):
    """The reward model's training settings, with `overrides` (None: not given) in place of the settings'.
    They go in before the config is made, so another `mode` also brings that mode's defaults."""
    from model.reward.config import TrainConfig

    fields = dict(
        base_model=settings.reward_base_model, mode=settings.train_mode, max_length=settings.reward_max_length,
        pooling=settings.reward_pooling, threads=settings.torch_threads, members=settings.train_members,
        feature_cache_dir=settings.model_dir / "feature-cache")
    return TrainConfig(**{**fields, **{k: v for k, v in overrides.items() if v is not None}})
