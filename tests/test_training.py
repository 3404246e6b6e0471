"""Bradley-Terry training on the tiny random BERT: a synthetic task with a known better answer."""

import dataclasses
import json
import random

import pytest
import torch
from tiny_models import tiny_encoder
from transformers import AutoModelForSequenceClassification

from model.pairs import PreferencePair
from model.reward.config import TrainConfig
from model.reward.model import RewardModel, cut_pair_prompts, encode_pairs
from model.reward.features import FeatureCache
from model.reward.splits import prompt_folds, split_pairs
from model.reward.train import train_reward_model

pytestmark = pytest.mark.slow

WORDS = "the quick brown fox jumps over lazy dog sea wind sky poem capital France Paris reward model".split()
REQUIRED = {"n_pairs", "n_train", "n_val", "val_accuracy", "val_accuracy_ci", "val_loss", "mean_margin",
            "reward_mean", "reward_std", "ece", "base_model", "mode", "max_length", "train_seconds"}


def synthetic_pairs(n, seed=0):
    """The chosen answer is the polite, helpful one; the rejected one the curt one, same content."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 8))) + "?"
        content = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))
        pairs.append(PreferencePair(prompt, f"politely and helpfully, {content}", f"no. {content}"))
    return pairs


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return str(tiny_encoder(tmp_path_factory.mktemp("enc") / "tiny-bert"))


@pytest.fixture(scope="module")
def pairs():
    return synthetic_pairs(240)


def config(encoder, mode, **kw):
    kw.setdefault("epochs", {"fast": 60, "full": 4}[mode])
    kw.setdefault("learning_rate", {"fast": 1e-2, "full": 2e-3}[mode])
    kw.setdefault("batch_size", 16)
    kw.setdefault("calibrate", False)  # these tests compare the saved model with what training computed, unscaled
    return TrainConfig(base_model=encoder, mode=mode, max_length=48, **kw)


@pytest.mark.parametrize("mode", ["fast", "full"])
def test_training_learns_the_known_preference(encoder, pairs, tmp_path, mode):
    test = synthetic_pairs(60, seed=1)
    before = RewardModel.load(encoder)
    margin_before = [c - r for c, r in zip(before.rewards([p.prompt for p in test], [p.chosen for p in test]),
                                           before.rewards([p.prompt for p in test], [p.rejected for p in test]))]
    progress = []
    metrics = train_reward_model(pairs, config(encoder, mode, threads=1, calibrate=True), tmp_path,
                                 progress=lambda f, m: progress.append(f))

    assert REQUIRED <= metrics.keys() and metrics["temperature"] > 0
    assert metrics["n_pairs"] == 240
    if mode == "fast":  # cross-fitted by default: every pair trains two of the three heads, and the third scores it
        assert metrics["n_train"] == metrics["n_val"] == 240 and metrics["folds"] == 3
    else:
        assert metrics["n_train"] + metrics["n_val"] == 240 and metrics["n_val"] >= 30
    assert metrics["val_accuracy"] > 0.9
    lo, hi = metrics["val_accuracy_ci"]
    assert lo <= metrics["val_accuracy"] <= hi
    assert metrics["mean_margin"] > 0 and 0 <= metrics["ece"] <= 1 and metrics["reward_std"] > 0
    assert (metrics["mode"], metrics["max_length"]) == (mode, 48)
    assert progress[-1] == 1.0 and progress == sorted(progress)
    assert json.loads((tmp_path / "metrics.json").read_text())["val_accuracy"] == metrics["val_accuracy"]
    for png in ("loss.png", "reliability.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"

    # Held-out pairs the training never saw, scored by the saved model.
    after = RewardModel.load(tmp_path)
    prefs = after.preference([p.prompt for p in test], [p.chosen for p in test], [p.rejected for p in test])
    assert sum(p > 0.5 for p in prefs) / len(prefs) > 0.9
    margin_after = [c - r for c, r in zip(after.rewards([p.prompt for p in test], [p.chosen for p in test]),
                                          after.rewards([p.prompt for p in test], [p.rejected for p in test]))]
    assert sum(margin_after) / len(test) > sum(margin_before) / len(test)
    trained = AutoModelForSequenceClassification.from_pretrained(tmp_path).classifier.weight
    assert not torch.equal(trained, before.model.classifier.weight)


@pytest.mark.parametrize("mode,pooling", [("fast", "mean"), ("full", "mean"), ("fast", "cls")])
def test_saved_folder_is_a_stock_model_scoring_like_reward_model(encoder, pairs, tmp_path, mode, pooling):
    metrics = train_reward_model(pairs[:60], config(encoder, mode, epochs=2, pooling=pooling), tmp_path)
    rm = RewardModel.load(tmp_path)
    stock = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert type(stock).__name__ == "BertForSequenceClassification"
    assert metrics["pooling"] == pooling
    assert stock.config.num_hidden_layers == 2 + (pooling == "mean")  # the tiny encoder has 2
    prompts = [p.prompt for p in pairs[:8]]
    answers = [p.chosen for p in pairs[:8]]
    from model.reward.model import encode_pairs
    with torch.inference_mode():
        direct = stock(**encode_pairs(rm.tokenizer, prompts, answers, rm.max_length)).logits[:, 0].tolist()
    assert rm.rewards(prompts, answers) == pytest.approx(direct, abs=1e-4)
    assert rm.max_length == 48


def test_fast_mode_scores_match_the_head_it_trained(encoder, pairs, tmp_path):
    """The saved model, re-reading the texts, reproduces the rewards computed from cached features."""
    metrics = train_reward_model(pairs[:40], config(encoder, "fast", epochs=5, folds=1), tmp_path)
    rm = RewardModel.load(tmp_path)
    _, val = split_pairs(pairs[:40], config(encoder, "fast", folds=1))
    m = [c - r for c, r in zip(rm.rewards([p.prompt for p in val], [p.chosen for p in val]),
                               rm.rewards([p.prompt for p in val], [p.rejected for p in val]))]
    assert sum(m) / len(m) == pytest.approx(metrics["mean_margin"], abs=1e-4)


def test_fast_mode_cross_fits_heads_on_prompt_folds_and_saves_their_average(encoder, tmp_path, monkeypatch):
    """Three heads from one start, each held out from its own fold of the prompts (every pair in exactly one
    fold, a prompt's pairs together), scored there by the head that did not train on them; the saved head
    is the heads' weight average, and it gives the rewards the metrics report."""
    import model.reward.fast as fast

    ranked = [PreferencePair(q.prompt, q.chosen, worse) for q in synthetic_pairs(40, seed=3)
              for worse in (q.rejected, "no.")]  # two pairs per prompt
    cfg = config(encoder, "fast", epochs=8, folds=3)
    folds = prompt_folds(ranked, cfg)
    assert sorted(i for fold in folds for i in fold) == list(range(80))
    prompts = [{ranked[i].prompt for i in fold} for fold in folds]
    assert len(folds) == 3 and not (prompts[0] & prompts[1] or prompts[0] & prompts[2] or prompts[1] & prompts[2])
    twice = [ranked[0], *ranked]  # one pair object twice (a duplicated annotation): both indices, one fold
    assert sorted(i for fold in prompt_folds(twice, cfg) for i in fold) == list(range(81))

    fits, real = [], fast._fit_head

    def recording(model, chosen, rejected, weights, t_idx, v_idx, *args):  # records around the real fit
        head, modules = fast._bert_head(model)
        start = {n: t.clone() for n, t in modules.state_dict().items()}
        result = real(model, chosen, rejected, weights, t_idx, v_idx, *args)
        fits.append({"start": start, "end": {n: t.clone() for n, t in modules.state_dict().items()},
                     "train": set(t_idx.tolist()), "held_out": v_idx.tolist(), "margins": result[1]})
        return result

    monkeypatch.setattr(fast, "_fit_head", recording)
    metrics = train_reward_model(ranked, cfg, tmp_path)

    assert (metrics["n_train"], metrics["n_val"], metrics["folds"]) == (80, 80, 3)
    assert [f["held_out"] for f in fits] == folds
    assert all(f["train"] == set(range(80)) - set(f["held_out"]) for f in fits)
    assert all(torch.equal(fits[0]["start"][n], f["start"][n]) for f in fits for n in f["start"])
    assert [h["member"] for h in metrics["history"]][0] == 1 and {h["member"] for h in metrics["history"]} == {1, 2, 3}
    held_out = {i: m for f in fits for i, m in zip(f["held_out"], f["margins"])}
    expected = [held_out[i] for i in range(80)]
    assert metrics["mean_margin"] == pytest.approx(sum(expected) / 80, abs=1e-5)
    saved = dict(AutoModelForSequenceClassification.from_pretrained(tmp_path).named_parameters())
    for name, key in (("classifier.weight", "1.weight"), ("bert.pooler.dense.weight", "0.dense.weight")):
        average = sum(f["end"][key] for f in fits) / 3
        assert torch.allclose(saved[name], average, atol=1e-6) and not torch.allclose(saved[name], fits[0]["end"][key])
    rm = RewardModel.load(tmp_path)
    rewards = rm.rewards([p.prompt for p in ranked] * 2, [p.chosen for p in ranked] + [p.rejected for p in ranked])
    assert sum(rewards) / len(rewards) == pytest.approx(metrics["reward_mean"], abs=1e-4)


def test_a_cross_fitted_heads_temperature_is_fitted_on_the_heads_and_narrowed_to_their_average(
        encoder, tmp_path, monkeypatch):
    """The temperature is fitted on the heads' held-out margins; the saved average's margins spread less than
    the heads', so its rewards are divided by that temperature times the ratio of the two spreads."""
    import model.reward.train as train_module

    data = synthetic_pairs(90, seed=4)
    cfg = config(encoder, "fast", epochs=8, folds=3)
    plain, calibrated = tmp_path / "plain", tmp_path / "calibrated"
    plain.mkdir(), calibrated.mkdir()
    before = train_reward_model(data, cfg, plain)
    fitted, real = [], train_module.fit_temperature
    monkeypatch.setattr(train_module, "fit_temperature",
                        lambda margins, weights: fitted.append((margins, real(margins, weights))) or fitted[-1][1])
    after = train_reward_model(data, dataclasses.replace(cfg, calibrate=True), calibrated)

    (held_out, t_heads), = fitted
    rewards = RewardModel.load(plain).rewards([p.prompt for p in data] * 2,
                                              [p.chosen for p in data] + [p.rejected for p in data])
    average_margins = torch.tensor(rewards[:90]) - torch.tensor(rewards[90:])
    spread = (average_margins.std() / torch.tensor(held_out).std()).item()
    assert after["average_spread"] == before["average_spread"] == pytest.approx(spread, rel=1e-3)
    assert abs(spread - 1) > 0.01  # else the test could not tell the narrowed temperature from the heads'
    assert after["temperature"] == pytest.approx(t_heads * spread, rel=1e-3)
    again = RewardModel.load(calibrated).rewards([p.prompt for p in data], [p.chosen for p in data])
    assert again == pytest.approx([r / after["temperature"] for r in rewards[:90]], abs=1e-4)
    assert after["val_accuracy"] == before["val_accuracy"] and after["val_loss"] <= before["val_loss"] + 1e-6


def test_feature_cache_is_reused_across_runs(encoder, pairs, tmp_path):
    cache_dir = tmp_path / "cache"
    (tmp_path / "a").mkdir()
    first = train_reward_model(pairs[:30], config(encoder, "fast", epochs=1, feature_cache_dir=cache_dir),
                               tmp_path / "a")
    assert first["features_encoded"] == 60 and list(cache_dir.rglob("shard-*.pt"))
    (tmp_path / "b").mkdir()
    second = train_reward_model(pairs[:40], config(encoder, "fast", epochs=1, feature_cache_dir=cache_dir),
                                tmp_path / "b")
    assert second["features_encoded"] == 20  # only the 10 new pairs' two answers
    (tmp_path / "c").mkdir()
    other = train_reward_model(pairs[:30], config(encoder, "fast", epochs=1, feature_cache_dir=cache_dir,
                                                  pooling="cls"), tmp_path / "c")
    assert other["features_encoded"] == 60  # another pooling gives other features
    assert FeatureCache.key("ab", "c") != FeatureCache.key("a", "bc")


def test_feature_cache_merges_its_shards_and_keeps_every_feature(encoder, pairs, tmp_path, monkeypatch):
    import model.reward.features as features

    monkeypatch.setattr(features, "MAX_SHARDS", 3)
    cache_dir = tmp_path / "cache"
    for n in range(1, 6):  # five runs, one new pair each: five shards, merged after the fourth
        out = tmp_path / str(n)
        out.mkdir()
        metrics = train_reward_model(pairs[:n], config(encoder, "fast", epochs=1, feature_cache_dir=cache_dir), out)
        assert metrics["features_encoded"] == 2
    assert len(list(cache_dir.rglob("shard-*.pt"))) <= 3
    (tmp_path / "all").mkdir()
    again = train_reward_model(pairs[:5], config(encoder, "fast", epochs=1, feature_cache_dir=cache_dir),
                               tmp_path / "all")
    assert again["features_encoded"] == 0


def test_few_pairs_train_on_all_without_val(encoder, pairs, tmp_path):
    metrics = train_reward_model(pairs[:5], config(encoder, "fast", epochs=3), tmp_path)
    assert (metrics["n_train"], metrics["n_val"]) == (5, 0)
    assert metrics["val_accuracy"] is None and metrics["val_accuracy_ci"] is None and metrics["ece"] is None
    assert RewardModel.load(tmp_path).rewards(["p"], ["a"])


def test_split_keeps_every_pair_of_one_prompt_on_one_side():
    """Each prompt has three pairs with different answers (a ranking of three): all on one side."""
    ranked = [PreferencePair(f"prompt {i}", f"best {i}", worse) for i in range(40) for worse in (f"mid {i}", f"bad {i}")]
    ranked += [PreferencePair(f"prompt {i}", f"mid {i}", f"bad {i}") for i in range(40)]
    train, val = split_pairs(ranked, TrainConfig(val_fraction=0.2))
    assert not {p.prompt for p in train} & {p.prompt for p in val}
    assert len(val) == 3 * 8 and len(train) + len(val) == 120


def test_no_pairs_and_bad_mode_raise(encoder, tmp_path):
    with pytest.raises(ValueError, match="no preference pairs"):
        train_reward_model([], TrainConfig(base_model=encoder), tmp_path)
    with pytest.raises(ValueError, match="mode"):
        train_reward_model(synthetic_pairs(3), TrainConfig(base_model=encoder, mode="slow"), tmp_path)
    with pytest.raises(ValueError, match="pooling"):
        train_reward_model(synthetic_pairs(3), TrainConfig(base_model=encoder, pooling="max"), tmp_path)
    with pytest.raises(ValueError, match="members must be at least 1"):
        train_reward_model(synthetic_pairs(3), TrainConfig(base_model=encoder, mode="full", members=0), tmp_path)


def test_weight_average_is_an_exponential_moving_average_and_swaps_back():
    from model.reward.full import _WeightAverage

    layer = torch.nn.Linear(2, 1)
    frozen = torch.nn.Linear(2, 1)
    model = torch.nn.Sequential(layer, frozen)
    frozen.requires_grad_(False)
    with torch.no_grad():
        layer.weight.fill_(0.0)
    average = _WeightAverage(model, horizon=4)  # decay 0.75
    assert set(average.average) == {"0.weight", "0.bias"}
    for value in (1.0, 2.0):
        with torch.no_grad():
            layer.weight.fill_(value)
        average.update()
    expected = (0.0 * 0.75 + 0.25 * 1.0) * 0.75 + 0.25 * 2.0
    assert average.average["0.weight"] == pytest.approx(torch.full((1, 2), expected))
    with average.applied():
        assert torch.allclose(layer.weight, torch.full((1, 2), expected))
    assert torch.equal(layer.weight, torch.full((1, 2), 2.0))


@pytest.mark.parametrize("groups", [2, 3])
def test_a_steps_rewards_come_from_passes_over_similar_lengths_in_the_order_given(encoder, pairs, groups):
    from model.reward.full import _rewards

    model = AutoModelForSequenceClassification.from_pretrained(encoder).eval()
    tokenizer = RewardModel.load(encoder).tokenizer
    chunk = pairs[:5]
    prompts, answers = [p.prompt for p in chunk] * 2, [p.chosen for p in chunk] + [p.rejected for p in chunk]
    assert len({len(a) for a in answers}) > groups  # lengths differ, so the passes reorder the texts
    with torch.no_grad():
        one_pass = model(**encode_pairs(tokenizer, prompts, answers, 64)).logits[:, 0]
        torch.testing.assert_close(_rewards(model, tokenizer, prompts, answers, 64, groups), one_pass)


def test_padding_a_steps_passes_to_a_multiple_of_16_tokens_leaves_their_rewards_as_they_were(encoder, pairs):
    from model.reward.full import BF16_PAD_MULTIPLE, _rewards

    model = AutoModelForSequenceClassification.from_pretrained(encoder).eval()
    tokenizer = RewardModel.load(encoder).tokenizer
    prompts, answers = [p.prompt for p in pairs[:6]], [p.chosen for p in pairs[:6]]
    padded = encode_pairs(tokenizer, prompts, answers, 64, pad_to_multiple_of=BF16_PAD_MULTIPLE)["input_ids"]
    plain = encode_pairs(tokenizer, prompts, answers, 64)["input_ids"]
    assert padded.shape[1] % BF16_PAD_MULTIPLE == 0 and padded.shape[1] > plain.shape[1]  # tokens were added
    with torch.no_grad():
        torch.testing.assert_close(_rewards(model, tokenizer, prompts, answers, 64,
                                            pad_to_multiple_of=BF16_PAD_MULTIPLE),
                                   _rewards(model, tokenizer, prompts, answers, 64))


@pytest.mark.parametrize("flags, device, tiles", [("avx512f avx512_bf16 amx_bf16 amx_tile", "cpu", True),
                                                  ("avx512f avx512_bf16 avx512_fp16", "cpu", False),
                                                  ("", "cuda", True)])
def test_bf16_runs_on_tiles_on_amx_cpus_and_gpus_only(monkeypatch, flags, device, tiles):
    import model.hardware as hardware

    monkeypatch.setattr(hardware, "_cpu_flags", lambda: f"flags\t\t: fpu sse2 {flags}\n")
    assert hardware.bf16_runs_on_tiles(torch.device(device)) is tiles


@pytest.mark.parametrize("bf16, tiles, max_length", [(True, True, 48), (False, True, 48), (True, False, 48),
                                                    (True, True, 40)])
def test_full_mode_pads_its_training_passes_to_a_multiple_of_16_tokens_in_bf16_on_tiles_only(
        encoder, pairs, tmp_path, monkeypatch, bf16, tiles, max_length):
    """...and only where max_length is a multiple too, so no pass grows past it (or the model's positions)."""
    import dataclasses

    import model.reward.full as full

    widths = []

    def encode_and_record(*args, **padding):
        enc = encode_pairs(*args, **padding)
        widths.append(enc["input_ids"].shape[1])
        return enc

    monkeypatch.setattr(full, "encode_pairs", encode_and_record)  # the training passes' encoder, not scoring's
    monkeypatch.setattr(full, "bf16_pays_off", lambda device: bf16)  # as on a CPU with (or without) native bf16
    monkeypatch.setattr(full, "bf16_runs_on_tiles", lambda device: tiles)  # ... and with (or without) AMX
    cfg = dataclasses.replace(config(encoder, "full", epochs=1), max_length=max_length)
    metrics = train_reward_model(pairs[:60], cfg, tmp_path)
    assert metrics["bf16"] is bf16 and widths and max(widths) <= max_length
    if bf16 and tiles and max_length % full.BF16_PAD_MULTIPLE == 0:
        assert all(w % full.BF16_PAD_MULTIPLE == 0 for w in widths)
    else:
        assert any(w % full.BF16_PAD_MULTIPLE for w in widths)


@pytest.mark.parametrize("prompt_tokens", [0, 3])
def test_full_mode_saves_the_best_averaged_point_by_held_out_loss(encoder, pairs, tmp_path, monkeypatch,
                                                                    prompt_tokens):
    """The held-out figures are those of the saved model, even though they are not measured again (to bf16's
    rounding where training, and so the held-out pass, runs in bf16; the saved model scores in fp32); with
    `prompt_tokens` set, training and the saved model read the same cut prompts."""
    import model.reward.full as full
    from model.reward.objective import margin_loss as _margin_loss

    read = []

    def encode_and_record(tokenizer, prompts, answers, max_length, **padding):
        read.extend(len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"])
        return encode_pairs(tokenizer, prompts, answers, max_length, **padding)

    monkeypatch.setattr(full, "encode_pairs", encode_and_record)
    cfg = config(encoder, "full", epochs=3, prompt_tokens=prompt_tokens)
    metrics = train_reward_model(pairs[:120], cfg, tmp_path)
    assert max(read) <= prompt_tokens + 1 if prompt_tokens else max(read) > 4  # +1: a cut inside a word
    epochs = [h["epoch"] for h in metrics["history"]]
    assert epochs == [1, 2, 3]  # once an epoch
    assert metrics["best_epoch"] in epochs
    assert metrics["val_loss"] == pytest.approx(min(h["val_loss"] for h in metrics["history"]), abs=1e-6)
    rm = RewardModel.load(tmp_path)
    # Training split the cut pairs; the saved model is handed the same pairs as given, and cuts them itself.
    cut = cut_pair_prompts(rm.tokenizer, pairs[:120], prompt_tokens)
    as_given = {id(c): p for c, p in zip(cut, pairs[:120])}
    val = [as_given[id(p)] for p in split_pairs(cut, cfg)[1]]
    margins = [c - r for c, r in zip(rm.rewards([p.prompt for p in val], [p.chosen for p in val]),
                                     rm.rewards([p.prompt for p in val], [p.rejected for p in val]))]
    rounding = 2e-3 if metrics["bf16"] else 1e-4  # the epochs' losses here lie 0.1 or more apart
    assert _margin_loss(margins, cfg) == pytest.approx(metrics["val_loss"], abs=rounding)  # the saved model is that point


@pytest.mark.parametrize("calibrate", [True, False])
def test_full_mode_compares_points_by_the_calibrated_held_out_loss_when_it_calibrates(encoder, pairs, tmp_path,
                                                                                      monkeypatch, calibrate):
    """Epoch 2 ranks more held-out pairs right (70% against 60%) but with overconfident margins (+-3 against
    +-0.3): its plain loss is higher, its loss after temperature scaling lower. A calibrated model serves the
    latter, so that is the point kept; without calibration the plain loss decides."""
    import model.reward.full as full

    real, epochs_scored = full._pair_margins, []

    def scripted(scorer, scored_pairs):  # the real rewards, held-out margins of the shape above
        rewards = real(scorer, scored_pairs)[1]
        epochs_scored.append(len(epochs_scored) + 1)
        right_of_10, size = (6, 0.3) if len(epochs_scored) == 1 else (7, 3.0)
        return [size if i % 10 < right_of_10 else -size for i in range(len(scored_pairs))], rewards

    monkeypatch.setattr(full, "_pair_margins", scripted)
    metrics = train_reward_model(pairs[:120], config(encoder, "full", epochs=2, calibrate=calibrate), tmp_path)
    first, second = metrics["history"]
    assert first["val_loss"] < second["val_loss"]
    if calibrate:
        assert second["val_loss_calibrated"] < first["val_loss_calibrated"] < first["val_loss"]
    else:
        assert "val_loss_calibrated" not in first
    assert metrics["best_epoch"] == (2 if calibrate else 1)


def test_full_mode_members_start_alike_and_the_saved_model_is_their_average(encoder, pairs, tmp_path, monkeypatch):
    """members=2: two fine-tunes from the same weights (head included) with their own data orders; the
    saved weights are the mean of their kept weights, whatever the members' held-out losses."""
    import model.reward.full as full

    starts, kept = [], []
    real = full._fine_tune

    def recording(model, *args, **kwargs):  # records around the real fine-tuning
        starts.append({n: p.detach().clone() for n, p in model.named_parameters()})
        best = real(model, *args, **kwargs)
        kept.append(best["weights"])
        return best

    monkeypatch.setattr(full, "_fine_tune", recording)
    cfg = config(encoder, "full", epochs=2, members=2)
    metrics = train_reward_model(pairs[:120], cfg, tmp_path)

    assert len(starts) == 2 and all(torch.equal(starts[0][n], starts[1][n]) for n in starts[0])
    assert [h["member"] for h in metrics["history"]] == [1] * 2 + [2] * 2
    assert [h["train_loss"] for h in metrics["history"][:2]] != [h["train_loss"] for h in metrics["history"][2:]]
    assert metrics["members"] == 2 and len(metrics["member_val_losses"]) == 2
    saved = dict(AutoModelForSequenceClassification.from_pretrained(tmp_path).named_parameters())
    expected = {n: (kept[0][n] + kept[1][n]) / 2 for n in kept[0]}
    assert all(torch.allclose(saved[n], expected[n], atol=1e-6) for n in expected)
    assert not torch.allclose(kept[0]["classifier.weight"], kept[1]["classifier.weight"])
    assert not torch.equal(saved["classifier.weight"], starts[0]["classifier.weight"])
    assert (tmp_path / "loss.png").stat().st_size > 0


@pytest.mark.parametrize("native", [False, True])
def test_full_mode_trains_in_bf16_and_eager_attention_only_where_the_cpu_has_bf16(encoder, pairs, tmp_path,
                                                                                 monkeypatch, native):
    """Emulated bf16 is ~20x slower than fp32 on a CPU without bf16 instructions; in bf16 on a CPU, eager
    attention trains faster than sdpa, in fp32 slower. The held-out passes score in the training's precision
    with sdpa, and the saved model keeps sdpa."""
    import model.hardware as hardware
    import model.reward.train as training

    dtypes, attention = {True: set(), False: set()}, {True: set(), False: set()}  # by whether gradients are on
    real = training.load_reward_base

    def watched(*args):  # the real base model, with hooks that see how the encoder computes
        model, tokenizer, pooling = real(*args)
        watched.model = model
        self_attention = model.base_model.encoder.layer[0].attention.self
        self_attention.query.register_forward_hook(
            lambda module, inputs, output: dtypes[torch.is_grad_enabled()].add(output.dtype))
        self_attention.register_forward_hook(
            lambda module, inputs, output: attention[torch.is_grad_enabled()].add(model.config._attn_implementation))
        return model, tokenizer, pooling

    monkeypatch.setattr(hardware, "cpu_has_fast_bf16", lambda: native)
    monkeypatch.setattr(training, "load_reward_base", watched)
    metrics = train_reward_model(pairs[:80], config(encoder, "full", epochs=1, val_fraction=0.25), tmp_path)
    assert metrics["n_val"] >= 10  # so the held-out pass ran
    precision = {torch.bfloat16} if native else {torch.float32}
    assert dtypes == {True: precision, False: precision}
    assert metrics["bf16"] is native
    assert attention == {True: {"eager" if native else "sdpa"}, False: {"sdpa"}}
    assert watched.model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("dropout", [False, True])
def test_full_mode_trains_without_dropout_unless_asked(encoder, pairs, tmp_path, dropout):
    """With the weights held still (learning rate 0, no averaging), the training loss over an epoch is
    the loss of the base model scored as it is served, unless dropout is on."""
    import torch.nn.functional as F

    from model.reward.model import load_reward_base

    cfg = config(encoder, "full", epochs=1, learning_rate=0.0, average_epochs=None, bf16=False,
                 val_fraction=0.0, dropout=dropout, pooling="cls")
    metrics = train_reward_model(pairs[:64], cfg, tmp_path)
    torch.manual_seed(cfg.seed)  # the same fresh classifier as training drew
    base, tok, _ = load_reward_base(encoder, "cls")
    rm = RewardModel(base, tok, cfg.max_length)
    chosen = torch.tensor(rm.rewards([p.prompt for p in pairs[:64]], [p.chosen for p in pairs[:64]]))
    rejected = torch.tensor(rm.rewards([p.prompt for p in pairs[:64]], [p.rejected for p in pairs[:64]]))
    served_loss = -F.logsigmoid(chosen - rejected).mean().item()
    epoch_loss = metrics["history"][0]["train_loss"]  # over 4 x 16 pairs
    assert (epoch_loss == pytest.approx(served_loss, abs=1e-6)) != dropout


def test_bt_loss_is_the_weighted_mean_over_pairs():
    from model.reward.objective import bt_loss, margin_loss

    chosen, rejected = torch.tensor([2.0, 0.0, -1.0]), torch.tensor([0.0, 1.0, 1.0])
    per_pair = -torch.nn.functional.logsigmoid(chosen - rejected)
    cfg = TrainConfig()
    assert bt_loss(chosen, rejected, cfg).item() == per_pair.mean().item()  # today's loss
    assert bt_loss(chosen, rejected, cfg, torch.ones(3)).item() == pytest.approx(per_pair.mean().item(), abs=1e-7)
    weights = torch.tensor([1 / 3, 1 / 3, 1.0])
    expected = (per_pair * weights).sum() / weights.sum()
    assert bt_loss(chosen, rejected, cfg, weights).item() == pytest.approx(expected.item(), abs=1e-7)
    assert margin_loss((chosen - rejected).tolist(), cfg, weights) == pytest.approx(expected.item(), abs=1e-6)
    with pytest.raises(ValueError, match="positive weight"):
        train_reward_model([PreferencePair("p", "a", "b", weight=0.0)], TrainConfig(), "/nonexistent")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fast", "full"])
def test_a_pair_of_weight_two_trains_as_that_pair_twice(encoder, pairs, tmp_path, mode):
    """One batch holding every pair, no held-out split, no dropout (its masks depend on the batch's size):
    the weighted mean over [a (w=2), b, c, ...] is the plain mean over [a, a, b, c, ...], so both
    trainings end in the same weights; ignoring the weight would not."""
    import dataclasses
    import shutil

    no_dropout = tmp_path / "encoder"
    shutil.copytree(encoder, no_dropout)
    settings = json.loads((no_dropout / "config.json").read_text())
    settings.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (no_dropout / "config.json").write_text(json.dumps(settings))
    base = pairs[:12]
    weighted = [dataclasses.replace(base[0], weight=2.0), *base[1:]]
    cfg = config(str(no_dropout), mode, epochs=3, batch_size=64, val_fraction=0.0, bf16=False, threads=1)
    saved = {}
    for name, data in (("weighted", weighted), ("twice", [base[0], *base]), ("unweighted", base)):
        (tmp_path / name).mkdir()
        train_reward_model(data, cfg, tmp_path / name)
        saved[name] = dict(AutoModelForSequenceClassification.from_pretrained(tmp_path / name).named_parameters())
    # The classifier's bias gets no Bradley-Terry gradient (it cancels in r_c - r_r): Adam turns the
    # float noise there into full steps, so it is left out. Summing [a, a, ...] and [2a, ...] rounds
    # differently, which Adam's normalised steps carry to ~1e-5 on some CPUs (AVX2); ignoring the weight
    # moves the weights by ~1e-2.
    close = lambda a, b: all(torch.allclose(a[n], b[n], atol=1e-4) for n in a if n != "classifier.bias")
    assert close(saved["weighted"], saved["twice"])
    assert not close(saved["weighted"], saved["unweighted"])


def test_fit_temperature_recovers_the_temperature_the_labels_were_drawn_with():
    from model.reward.calibration import fit_temperature

    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(20000, generator=gen) * 3
    chosen_first = torch.rand(20000, generator=gen) < torch.sigmoid(scores / 2.0)  # P(first preferred), T = 2
    margins = torch.where(chosen_first, scores, -scores)  # chosen minus rejected
    assert fit_temperature(margins.tolist()) == pytest.approx(2.0, rel=0.1)
    assert fit_temperature((margins / 2).tolist()) == pytest.approx(1.0, rel=0.1)


@pytest.mark.slow
def test_calibration_divides_the_saved_rewards_by_the_temperature_and_keeps_the_ranking(encoder, pairs, tmp_path):
    cfg = config(encoder, "full", epochs=2)
    plain, calibrated = tmp_path / "plain", tmp_path / "calibrated"
    plain.mkdir(), calibrated.mkdir()
    before = train_reward_model(pairs[:120], cfg, plain)
    after = train_reward_model(pairs[:120], dataclasses.replace(cfg, calibrate=True), calibrated)
    t = after["temperature"]
    assert t != 1.0 and "temperature" not in before
    prompts, answers = [p.prompt for p in pairs[:20]], [p.chosen for p in pairs[:20]]
    rewards = RewardModel.load(plain).rewards(prompts, answers)
    assert RewardModel.load(calibrated).rewards(prompts, answers) == pytest.approx([r / t for r in rewards], abs=1e-4)
    assert after["val_accuracy"] == before["val_accuracy"] and after["val_loss"] <= before["val_loss"] + 1e-6
