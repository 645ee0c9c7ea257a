"""hpsearch: distributed hyperparameter search for medical image segmentation.

The data flow follows the package layout: a job file (:mod:`hpsearch.spec`) names a
NIfTI dataset (:mod:`hpsearch.data`), a model family (:mod:`hpsearch.models`) and a
search space (:mod:`hpsearch.space`); :mod:`hpsearch.trainer` trains one configuration
epoch by epoch; :mod:`hpsearch.search` runs many on Ray Tune with Optuna and ASHA;
:mod:`hpsearch.tracking` records them in MLflow; :mod:`hpsearch.export` and
:mod:`hpsearch.predict` turn the best one into label maps of new scans.
"""

__version__ = "0.1.0"
