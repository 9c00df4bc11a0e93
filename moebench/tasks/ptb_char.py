"""Penn Treebank at character level: Mikolov's ptb.char.* files.

The same text as ptb.*, one character per space-separated symbol and "_" for
a space; with one <eos> per line, 50 symbols. Metric: bits per character.
Reference: 3-layer AWD-LSTM 1.175 bpc test (Merity et al. 2018, "An Analysis
of Neural Language Modeling at Multiple Scales").
"""

from moebench.tasks import TASKS
from moebench.tasks.corpus import WordCorpus
from moebench.tasks.lm import LMConfig, LMTask


@TASKS.register("ptb_char", LMConfig)
class PTBChar(LMTask):
    corpus = WordCorpus({"train": "ptb/ptb.char.train.txt", "val": "ptb/ptb.char.valid.txt",
                         "test": "ptb/ptb.char.test.txt"})
    quality_metric = "bpc"
    eval_splits = ("val", "test")
