"""WikiText-2 (Merity et al. 2016, arXiv:1609.07843), tokenized v1, word level.

The standard files; 33,278 word types from train (with <unk> and <eos>);
2,088,628 / 217,646 / 245,569 tokens counting one <eos> per line, as the
paper and pytorch/examples. Metric: perplexity. Reference: AWD-LSTM (Merity
et al. 2017) val 68.6 / test 65.8.
"""

from moebench.tasks import TASKS
from moebench.tasks.corpus import WordCorpus
from moebench.tasks.lm import WordLMConfig, WordLMTask

WIKITEXT2 = WordCorpus({"train": "wikitext-2/train.txt", "val": "wikitext-2/valid.txt",
                        "test": "wikitext-2/test.txt"})


@TASKS.register("wikitext2", WordLMConfig)
class WikiText2(WordLMTask):
    corpus = WIKITEXT2
    quality_metric = "perplexity"
    eval_splits = ("val", "test")
