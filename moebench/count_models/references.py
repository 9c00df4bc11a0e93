"""Each task's count-model references, on the tokens and in the metric its models are scored in.

Language modelling: the :mod:`~moebench.count_models.ngram` models are
fitted on the task's train split as its own corpus encodes it
(``task.corpus.load``: the same ids, ``<unk>`` and one ``<eos>`` per line
for the word and PTB-char files, bytes for Tiny Shakespeare and enwik8) and
score an evaluation split in one of two ways:

* *the evaluation's batches* (an :class:`EvalDraw`): the batches a run's
  evaluation draws (moebench/evaluate.py: ``trainer.eval_batches`` calls of
  the task's own ``get_batch`` from a generator seeded ``EVAL_SEED``), each
  target predicted from the tokens before it in its window, as the model
  sees them. These are the models' exact tokens, which matters: a
  ``cpu_quick`` evaluation is 8 x 4 windows of 128 tokens, and on PTB the
  trigram scores 0.18 nats per token (19% in perplexity) worse on those
  windows than on the whole split, more than any margin the leaderboard
  could allow for it.
* *the whole split* (no draw): every token after the first, given the
  tokens before it; the number to compare with the literature (the
  trigram's PTB test perplexity, 148.4, is Mikolov 2012's KN3, 148.3:
  thesis, Table 4.1).

The mean cross-entropy in nats becomes the task's metric (bits per
character, perplexity, or nats for the masked LM) as the task turns its
models' loss. An adaptive softmax's perplexity is the exact cross-entropy
of its whole distribution, so the numbers compare directly.

Masked LM (``wikitext2_mlm``): scored at the positions the task's masking
chose, each predicted from the (at most two) tokens before it in its window,
uncorrupted. What the count model sees is not what the model sees: it has
no right context and never the position's own input (which BERT's 80/10/10
leaves as the true token 10% of the time), but its left context is never
``[MASK]`` or a random token (the model's is at 13.5% of positions). The
whole-split number scores every position after the first instead: masking
chooses positions independently of the tokens, so that is the expected
masked-position mean.

Synthetic task: the majority class, the label most frequent among
:data:`MAJORITY_SAMPLES` training examples, scored on the evaluation's
examples.

Results are cached with the token cache (:mod:`moebench.tasks.data`), under a
key made of the data files' sha256, the task's settings and draw, this
module's version and the models' names.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from moebench.config import DataConfig
from moebench.count_models.ngram import COUNT_MODELS, CountModel
from moebench.errors import ConfigError
from moebench.evaluate import EVAL_SEED
from moebench.tasks import TASKS, Task
from moebench.tasks.corpus import ENCODING_VERSION, TokenArrays
from moebench.tasks.data import cache_dir, checked_file, read_cache, write_cache
from moebench.tasks.lm import FROM_NATS, LMTask
from moebench.tasks.synthetic import SyntheticTask

# Bump when a model, the scoring or the cached arrays change.
REFERENCES_VERSION = 1
# Metrics from nats per token: the LM tasks' own, plus the masked LM's, which
# is the loss itself (WikiText2MLM.quality).
METRIC_FROM_NATS: dict[str, Callable[[float], float]] = {**FROM_NATS, "masked_loss": lambda nats: nats}
# Synthetic training examples the majority class is chosen on, drawn in
# batches of SAMPLE_BATCH (the teacher's per-example weights make a large
# batch large in memory); without a draw it is scored on as many.
MAJORITY_SAMPLES, SAMPLE_BATCH = 1 << 15, 4096
MAJORITY_NAME = "majority class"


@dataclass(frozen=True)
class EvalDraw:
    """What a run's evaluation draws: ``eval_batches`` batches of
    ``batch_tokens`` tokens (``trainer.batch_tokens``, ``trainer.eval_batches``)."""

    batch_tokens: int
    eval_batches: int

    def batch_size(self, task: Task) -> int:
        """Examples per batch, as moebench/train.py sizes them."""
        return max(1, self.batch_tokens // task.tokens_per_example)


@dataclass(frozen=True)
class Reference:
    """One count model's quality on each evaluation split of a task."""

    name: str  # with its smoothing, e.g. "bigram (add-0.1)"
    quality: dict[str, float]  # split -> the task's metric
    seconds: float  # wall time to fit it and score every split (when it was computed)


def task_references(task: str, data: DataConfig, settings: Mapping[str, object] | None = None,
                    draw: EvalDraw | None = None) -> list[Reference]:
    """The count-model references of ``task``: n-gram models for a
    language-modelling task, the majority class for the synthetic task, none
    for another. ``settings`` are the task's configuration as a run record
    holds it (``config.task``); ``draw`` the evaluation's batches to score,
    else the whole split. Raises DataError when a data file is missing or not
    the expected one, ConfigError when ``settings`` do not make the task."""
    cls = TASKS.get(task).cls
    if issubclass(cls, LMTask):
        names = [model.name for model in COUNT_MODELS]
        shas = [checked_file(data, rel)[1] for rel in cls.corpus.paths]
    elif issubclass(cls, SyntheticTask):
        names, shas = [MAJORITY_NAME], []
    else:
        return []
    # The whole split of a language-modelling task is read from its corpus alone.
    drawn = draw is not None or issubclass(cls, SyntheticTask)
    built = build_task(task, settings or {}, data) if drawn else None
    key = _key(f"count-models {REFERENCES_VERSION} {ENCODING_VERSION} {task} {names} "
               f"{built.cfg if built else None} {draw} {EVAL_SEED} {shas}")
    path = cache_dir(data) / f"count-models-{task}-{key}.npz"
    arrays = read_cache(path, key)
    if arrays is None:
        arrays = _compute(built, cls, data, draw)
        write_cache(path, key, arrays)
    return [Reference(name, {split: float(arrays[f"{name}.{split}"]) for split in cls.eval_splits},
                      float(arrays[f"{name}.seconds"]))
            for name in names]


def build_task(task: str, settings: Mapping[str, object], data: DataConfig) -> Task:
    """The task as a run record configures it (its scalar ``config.task``
    entries). Built with the full softmax head: the head does not change the
    batches a task draws, and an adaptive head's cutoffs (a list) are not
    among the leaderboard's columns."""
    entry = TASKS.get(task)
    values = {k: v for k, v in settings.items() if k in entry.config_cls.__dataclass_fields__}
    values["name"] = task
    if "head" in values:
        values["head"] = "full"
    try:
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(entry.config_cls), values))
    except OmegaConfBaseException as e:
        raise ConfigError("config.task", values, f"the task settings of a run record "
                          f"({str(e).splitlines()[0]})") from None
    return entry.cls(cfg, data, seed=0)


def _compute(task: Task | None, task_cls: type[Task], data: DataConfig,
             draw: EvalDraw | None) -> dict[str, np.ndarray]:
    """Per reference: the task's metric on each evaluation split, and the
    seconds it took. ``task`` is None where nothing is drawn from it (the
    whole splits of a language-modelling task)."""
    if issubclass(task_cls, SyntheticTask):
        return _majority_class(task, draw or EvalDraw(SAMPLE_BATCH, MAJORITY_SAMPLES // SAMPLE_BATCH))
    tokens = task_cls.corpus.load(data)
    metric = METRIC_FROM_NATS[task_cls.quality_metric]
    arrays = {}
    for model_cls in COUNT_MODELS:
        start = time.perf_counter()
        model = model_cls(tokens.splits["train"], tokens.vocab_size)
        for split in task_cls.eval_splits:
            nats = _draw_nats(model, task, split, draw) if draw else _split_nats(model, tokens, split)
            arrays[f"{model.name}.{split}"] = np.array(metric(nats))
        arrays[f"{model.name}.seconds"] = np.array(time.perf_counter() - start)
    return arrays


def _split_nats(model: CountModel, tokens: TokenArrays, split: str) -> float:
    """Mean nats of every token of the split after its first."""
    return float(-np.log(model.window_probs(tokens.splits[split][None])[0, 1:]).mean())


def _draw_nats(model: CountModel, task: Task, split: str, draw: EvalDraw) -> float:
    """Mean nats of the targets the evaluation scores, drawn as it draws them."""
    generator = torch.Generator().manual_seed(EVAL_SEED)
    nats, counted = 0.0, 0
    for _ in range(draw.eval_batches):
        batch = task.get_batch(split, draw.batch_size(task), generator)
        if task.causal:  # targets are the inputs one ahead: score the window after its first token
            window_BW = torch.cat([batch.inputs[:, :1], batch.targets], dim=1).numpy()
            probs_N = model.window_probs(window_BW)[:, 1:].reshape(-1)
        else:  # masked LM: the uncorrupted window, at the chosen positions
            probs_N = model.window_probs(batch.targets.numpy())[batch.loss_mask.bool().numpy()]
        nats += float(-np.log(probs_N).sum())
        counted += len(probs_N)
    return nats / counted


def _majority_class(task: SyntheticTask, draw: EvalDraw) -> dict[str, np.ndarray]:
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(0)
    train_labels_N = torch.cat([task.get_batch("train", SAMPLE_BATCH, generator).targets
                                for _ in range(MAJORITY_SAMPLES // SAMPLE_BATCH)])
    majority = torch.bincount(train_labels_N).argmax()
    arrays = {}
    for split in task.eval_splits:
        generator = torch.Generator().manual_seed(EVAL_SEED)
        labels_N = torch.cat([task.get_batch(split, draw.batch_size(task), generator).targets
                              for _ in range(draw.eval_batches)])
        arrays[f"{MAJORITY_NAME}.{split}"] = np.array(float((labels_N == majority).double().mean()))
    arrays[f"{MAJORITY_NAME}.seconds"] = np.array(time.perf_counter() - start)
    return arrays


def _key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]
