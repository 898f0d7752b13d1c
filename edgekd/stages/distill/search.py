"""Hyper-parameter search for distillation with Optuna (`distill.search` in the recipe).

Each trial samples alpha, temperature, learning rate and epochs, trains a fresh student on the cached teacher
logits and is scored by validation accuracy. After every epoch the trial reports its accuracy to Optuna's
MedianPruner, which stops trials that are already worse than the median of earlier trials at the same epoch.
The sampler is a seeded TPE sampler, so the same recipe proposes the same trials. The best trial's student
becomes the stage's model; every trial is written to `distill/search.json`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edgekd.errors import MissingDependencyError, StageError

if TYPE_CHECKING:
    import optuna

    from edgekd.recipe.schema import SearchSpec

# A trial's training: (sampled params, extra Trainer callbacks) -> (trained student, metrics with
# "validation_accuracy").
TrainTrial = Callable[[dict[str, Any], list[Any]], tuple[Any, dict[str, Any]]]


@dataclass
class SearchOutcome:
    """The best trial's model and metrics, and the record written to search.json."""

    model: Any
    metrics: dict[str, Any]
    record: dict[str, Any] = field(default_factory=dict)


def _optuna() -> Any:
    try:
        import optuna
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise MissingDependencyError("optuna") from exc
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def sample_params(trial: optuna.Trial, spec: SearchSpec) -> dict[str, Any]:
    """One point of the search space: alpha and T uniform, the learning rate log-uniform, whole epochs."""
    return {
        "alpha": trial.suggest_float("alpha", *spec.alpha),
        "temperature": trial.suggest_float("temperature", *spec.temperature),
        "learning_rate": trial.suggest_float("learning_rate", *spec.learning_rate, log=True),
        "epochs": trial.suggest_int("epochs", *spec.epochs),
    }


def make_pruning_callback(trial: optuna.Trial) -> Any:
    """A TrainerCallback that reports each evaluation's accuracy to `trial` and stops hopeless trials."""
    from transformers import TrainerCallback

    optuna = _optuna()

    class PruningCallback(TrainerCallback):
        def __init__(self) -> None:
            self.reported: set[int] = set()

        def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            metrics: dict[str, float] = kwargs["metrics"]
            # One evaluation per epoch: the epoch number is the step the pruner compares trials at.
            step = max(1, round(state.epoch or 0))
            if step in self.reported:
                return  # the closing evaluation after training repeats the last epoch's
            self.reported.add(step)
            trial.report(metrics["eval_accuracy"], step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"accuracy {metrics['eval_accuracy']:.4f} after epoch {step}")

    return PruningCallback()


def make_study(spec: SearchSpec, seed: int, pruner: Any = None) -> optuna.Study:
    """A maximising in-memory study with a seeded TPE sampler and (unless disabled) a median pruner."""
    optuna = _optuna()
    if pruner is None:
        # Two finished trials before anything is pruned: a median of one trial is too noisy to judge by.
        pruner = (
            optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
            if spec.pruning
            else optuna.pruners.NopPruner()
        )
    return optuna.create_study(
        direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed), pruner=pruner
    )


def run_search(
    spec: SearchSpec,
    seed: int,
    train_trial: TrainTrial,
    log: Callable[[str], None] = print,
    pruner: Any = None,
) -> SearchOutcome:
    """Run `spec.n_trials` trials and return the best trial's student (kept in memory, not re-trained).

    Args:
        spec: The recipe's `distill.search`.
        seed: Seeds the TPE sampler (each trial's training is seeded by the distill seed).
        train_trial: Trains one student with the sampled params and callbacks.
        log: Progress lines.
        pruner: An Optuna pruner to use instead of the recipe's choice (tests).

    Raises:
        StageError: when no trial finished (all pruned or failed).
    """
    study = make_study(spec, seed, pruner)
    best: dict[str, Any] = {}
    durations: dict[int, float] = {}

    def objective(trial: Any) -> float:
        params = sample_params(trial, spec)
        t0 = time.perf_counter()
        try:
            model, metrics = train_trial(params, [make_pruning_callback(trial)])
        finally:
            durations[trial.number] = round(time.perf_counter() - t0, 1)
        value = float(metrics["validation_accuracy"])
        # Keep the first trial with the best value, as `study.best_trial` does; the others are dropped.
        if not best or value > best["value"]:
            best.update(value=value, model=model, metrics=metrics, number=trial.number)
        log(f"search trial {trial.number}: accuracy {value:.4f} with {format_params(params)}")
        return value

    study.optimize(objective, n_trials=spec.n_trials, catch=())
    record = search_record(study, spec, seed, durations)
    if not best:
        raise StageError(
            f"no search trial finished ({len(study.trials)} pruned)",
            hint="set distill.search.pruning: false or raise n_trials",
        )
    metrics = {**best["metrics"], "search_best_trial": best["number"], "search_trials": len(study.trials)}
    return SearchOutcome(model=best["model"], metrics=metrics, record=record)


def format_params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in params.items())


def search_record(
    study: optuna.Study, spec: SearchSpec, seed: int, durations: dict[int, float]
) -> dict[str, Any]:
    """search.json: the settings, every trial, the best one, and series a report can plot directly."""
    trials: list[dict[str, Any]] = [
        {
            "number": t.number,
            "state": t.state.name,
            "value": t.value,
            "params": t.params,
            "epoch_accuracy": {str(k): v for k, v in sorted(t.intermediate_values.items())},
            "seconds": durations.get(t.number),
        }
        for t in study.trials
    ]
    complete = [t for t in trials if t["state"] == "COMPLETE"]
    best = max(complete, key=lambda t: t["value"]) if complete else None
    return {
        "metric": "validation accuracy",
        "direction": "maximize",
        "sampler": f"TPESampler(seed={seed})",
        "pruner": type(study.pruner).__name__,
        "space": spec.model_dump(mode="json", exclude={"n_trials", "pruning"}),
        "n_trials": spec.n_trials,
        "best_trial": best and best["number"],
        "best_value": best and best["value"],
        "best_params": best and best["params"],
        "trials": trials,
        "plot": plot_series(trials),
    }


def plot_series(trials: list[dict[str, Any]]) -> dict[str, Any]:
    """x = trial number; `value` (None for pruned trials), the running best, and the last accuracy a pruned
    trial reached (so a chart can show where it was stopped)."""
    running: float | None = None
    best_so_far, last_reported = [], []
    for t in trials:
        if t["state"] == "COMPLETE" and (running is None or t["value"] > running):
            running = t["value"]
        best_so_far.append(running)
        values = list(t["epoch_accuracy"].values())
        last_reported.append(values[-1] if values else None)
    return {
        "trial": [t["number"] for t in trials],
        "value": [t["value"] for t in trials],
        "state": [t["state"] for t in trials],
        "best_so_far": best_so_far,
        "last_epoch_accuracy": last_reported,
    }
