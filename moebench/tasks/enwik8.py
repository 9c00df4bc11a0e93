"""enwik8: the first 10^8 bytes of an English Wikipedia XML dump (Hutter Prize), byte level.

The standard split (Transformer-XL's prep_enwik8.py, and Al-Rfou et al.
2018) is the first 90M bytes train, the next 5M valid, the last 5M test; as
shares of the file, 90% / 5% / 5%, which is how a file of any other size is
cut. Tokens are the file's distinct bytes (205 of them). The file is not
shipped: users supply it (see data.SOURCES). References: Transformer-XL 12L
1.06 bpc, 24L 0.99 bpc (Dai et al. 2019).
"""

from fractions import Fraction

from moebench.tasks import TASKS
from moebench.tasks.corpus import ByteCorpus
from moebench.tasks.lm import LMConfig, LMTask


@TASKS.register("enwik8", LMConfig)
class Enwik8(LMTask):
    corpus = ByteCorpus("enwik8/enwik8",
                        {"train": Fraction(9, 10), "val": Fraction(19, 20), "test": Fraction(1)})
    quality_metric = "bpc"
    eval_splits = ("val", "test")
