"""Penn Treebank, Mikolov's preprocessing (RNNLM toolkit "simple-examples"), word level.

10,000 word types (with <unk> and <eos>); 929,589 / 73,760 / 82,430 tokens
counting one <eos> per line. Metric: perplexity. References: Zaremba et al.
2014 medium LSTM 82.7, AWD-LSTM (Merity et al. 2017) test 57.3.
"""

from moebench.tasks import TASKS
from moebench.tasks.corpus import WordCorpus
from moebench.tasks.lm import WordLMConfig, WordLMTask


@TASKS.register("ptb", WordLMConfig)
class PTB(WordLMTask):
    corpus = WordCorpus({"train": "ptb/ptb.train.txt", "val": "ptb/ptb.valid.txt",
                         "test": "ptb/ptb.test.txt"})
    quality_metric = "perplexity"
    eval_splits = ("val", "test")
