"""Tiny Shakespeare at character level, as nanoGPT's ``shakespeare_char``.

nanoGPT's data/shakespeare_char/prepare.py: the first 90% of the 1,115,394
characters train (1,003,854), the last 10% val (111,540); the vocabulary is
the 65 distinct characters of the whole file. There is no test split.
Reference: nanoGPT's config/train_shakespeare_char.py (10.7M parameters)
reaches val loss 1.4697 nats/char, i.e. 2.12 bpc.
"""

from fractions import Fraction

from moebench.tasks import TASKS
from moebench.tasks.corpus import ByteCorpus
from moebench.tasks.lm import LMConfig, LMTask


@TASKS.register("shakespeare_char", LMConfig)
class ShakespeareChar(LMTask):
    corpus = ByteCorpus("tinyshakespeare/input.txt", {"train": Fraction(9, 10), "val": Fraction(1)})
    quality_metric = "bpc"
    eval_splits = ("val",)
