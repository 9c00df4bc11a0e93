"""Building blocks of the leaderboard and the comparison reports: ranking
(:mod:`.ranking`), reference rows (:mod:`.references`), the guard against
ranking models not past the count models (:mod:`.guard`), paired differences
(:mod:`.paired`), the cross-task summary (:mod:`.crosstask`), the records'
commits (:mod:`.provenance`), the expert-count report (:mod:`.experts`),
figures (:mod:`.figures`) and rendering (:mod:`.render`). All are pure functions of
the frames of :mod:`moebench.results` (the reference rows also of the data
files)."""
