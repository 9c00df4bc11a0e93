"""Count models: what counting alone predicts, the reference every table is read against.

:mod:`.ngram` holds the estimators (add-one unigram, add-0.1 bigram,
interpolated modified Kneser-Ney trigram); :mod:`.references` fits them on a
task's train split and scores them as the task scores its models, cached by
the data files' sha256. ``moebench-count-models`` prints them.
"""
