"""What a training phase reports as it goes, to the log and to the run's tracker.

A start-up line (phase, router, task, parameters, budget, device, threads)
once the first step has measured what a step executes; a step line every
``trainer.log_every_s`` (loss, learning rate, drop rate, load CV, tokens/s,
ETA); a validation line at each evaluation. A phase other
than the main training names itself in its lines: ``pretrain`` (a transfer
run's pretraining) and ``oracle`` (the synthetic task's oracle baseline, a
second model whose steps count from 1 again). ``trainer.quiet`` silences
the step and validation lines; the start-up lines, warnings, errors and the
summary still print, and the tracker gets every figure either way.

Called at logging and evaluation points only, never every step: the one
device sync it needs, the step line's loss, was there before it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

import torch

from moebench.config import TrainerConfig
from moebench.schedule import evaluations_due
from moebench.tracking.base import Tracker

log = logging.getLogger(__name__)

MAIN_PHASE = "train"
PHASE_NOTES = {"pretrain": " (pretraining; fine-tuning follows)",
               "oracle": " (the oracle baseline: a second model routed by true cluster, steps from 1 again)"}


def si(x: float) -> str:
    """``x`` to 3 significant digits with an SI suffix: 1.07M, 307k; 1.9e+15 from 1000T."""
    for suffix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale and abs(x) < 1000 * scale:
            return f"{x / scale:.3g}{suffix}"
    return f"{x:.3g}"


def clock(seconds: float) -> str:
    """h:mm:ss, or m:ss under an hour."""
    minutes, s = divmod(round(seconds), 60)
    h, m = divmod(minutes, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def budget_source(t: TrainerConfig) -> str:
    if t.max_tokens is not None:
        return f"trainer.max_tokens={t.max_tokens}"
    if t.max_train_flops is not None:
        return f"trainer.max_train_flops={t.max_train_flops:g}"
    return "trainer.max_steps"


class Progress:
    """One phase's reports."""

    def __init__(self, phase: str, trainer: TrainerConfig, quality_metric: str, tracker: Tracker) -> None:
        self.phase, self.t, self.quality_metric, self.tracker = phase, trainer, quality_metric, tracker
        self.prefix = "" if phase == MAIN_PHASE else f"{phase}/"
        self.last_report, self.last_step, self.last_train_time = time.perf_counter(), 0, 0.0
        self.eval_seconds = 0.0  # the last evaluation's, for the ETA

    def plan(self, max_steps: int) -> None:
        """The phase's step count (a budget in tokens or FLOPs turned into
        steps, re-estimated as a FLOPs budget is spent: moebench.schedule.Horizon),
        which also places its evaluations (moebench.schedule.evaluations_due)."""
        self.t = replace(self.t, max_steps=max_steps)

    def start(self, router: str, task: str, active_params: float, total_params: int,
              train_flops_per_token: float, tokens_per_step: int, device: torch.device) -> None:
        """The start-up line, printed even when quiet: it says what the log that
        follows is. Printed once the first step has run, which measures the
        parameters a token uses and the FLOPs a step executes (a forward before
        training would draw a batch and cost a step's forward for it)."""
        tokens = self.t.max_steps * tokens_per_step
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
        threads = torch.get_num_threads()
        log.info("%s: %s on %s%s | params %s active of %s | budget %d steps (%s) = %s tokens "
                 "= %s training FLOPs | %s, %d thread%s",
                 self.phase, router, task, PHASE_NOTES.get(self.phase, ""), si(active_params),
                 si(total_params), self.t.max_steps, budget_source(self.t), si(tokens),
                 si(train_flops_per_token * tokens), name, threads, "" if threads == 1 else "s")

    def due(self, step: int) -> bool:
        """Time for a step line after ``step`` (counted from 1): every
        ``trainer.log_every_s``, and after the last step."""
        return time.perf_counter() - self.last_report >= self.t.log_every_s or step == self.t.max_steps

    def step(self, step: int, loss: float, lr: float, routing: dict, tokens_seen: int,
             train_time: float) -> None:
        """The step line after ``step``; ``routing`` summarizes the steps since
        the last one, ``train_time`` the seconds spent training so far."""
        seconds_per_step = (train_time - self.last_train_time) / max(1, step - self.last_step)
        evaluations_left = evaluations_due(self.t.max_steps, self.t) - evaluations_due(step, self.t) + 1
        eta = (self.t.max_steps - step) * seconds_per_step + evaluations_left * self.eval_seconds
        tokens_per_s = tokens_seen / max(train_time, 1e-9)
        self.last_report, self.last_step, self.last_train_time = time.perf_counter(), step, train_time
        if not self.t.quiet:
            log.info("%s step %4d/%d | loss %.4f | lr %.2e | drop %5.1f%% | load cv %.3f | "
                     "%7.0f tok/s | eta %s", self.phase, step, self.t.max_steps, loss, lr,
                     100 * routing.get("drop_rate", 0.0), routing.get("load_cv", 0.0), tokens_per_s,
                     clock(eta))
        metrics = {"loss": loss, "lr": lr, "tokens_per_s": tokens_per_s,
                   **{key: routing[key] for key in ("drop_rate", "load_cv") if key in routing}}
        self.tracker.log_metrics(step, {f"{self.prefix}train/{key}": v for key, v in metrics.items()})

    def evaluation(self, step: int, evaluation: dict, seconds: float, final: bool = False) -> None:
        """The validation line of an evaluation after ``step`` that took ``seconds``."""
        self.eval_seconds = seconds
        if not self.t.quiet:
            log.info("%s val  %4d/%d%s | loss %.4f | %s %.4g | drop %5.1f%% | load cv %.3f | %.1f s",
                     self.phase, step, self.t.max_steps, " (final)" if final else "",
                     evaluation["loss"], self.quality_metric, evaluation["quality"],
                     100 * evaluation.get("drop_rate", 0.0), evaluation.get("load_cv", 0.0), seconds)
        metrics = {"loss": evaluation["loss"], self.quality_metric: evaluation["quality"],
                   **{key: evaluation[key] for key in ("drop_rate", "load_cv") if key in evaluation}}
        self.tracker.log_metrics(step, {f"{self.prefix}val/{key}": v for key, v in metrics.items()})
