"""Building blocks of the leaderboard and the comparison reports: ranking
(:mod:`.ranking`), figures (:mod:`.figures`) and rendering (:mod:`.render`).
All are pure functions of the frames of :mod:`moebench.results`."""
