"""Reports: where numbers (:mod:`prealign.analysis`, :mod:`prealign.stats`) meet figures
(:mod:`prealign.viz`). Above both, so that neither imports the other.

- :mod:`.registry` — the analysis registry: one entry per analysis, binding what it computes to
  what it prints and draws; ``execute(NAME, options)`` is ``prealign analyze NAME``.
- :mod:`.analyze` — each analysis's ``prealign analyze`` form: result, tables, lines, figures.
- :mod:`.compare` — the summary, table, figures and Markdown report of a grid of runs
  (``prealign compare`` and ``prealign sweep``).
"""
