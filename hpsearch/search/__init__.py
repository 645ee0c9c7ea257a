"""The search: job sections (:mod:`.config`), the Ray Tune trial (:mod:`.trainable`),
Tuner construction (:mod:`.tuner`), results (:mod:`.results`), ``run``/``resume``
(:mod:`.driver`) and exporting the best trial (:mod:`.exporting`).

Nothing is imported here: :mod:`hpsearch.spec` reads :mod:`.config` without Ray.
"""
