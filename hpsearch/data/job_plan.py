"""A patch-mode job's plan: the ``dataset:`` section's ``auto`` values resolved.

``spacing`` and ``patch_size`` can each be ``auto`` (nnU-Net's rules in
:mod:`hpsearch.data.plan`, the one owner of planning) or explicit; ``spacing: none``
keeps every case on its own grid. The plan is made from the NIfTI *headers* alone
(:func:`~hpsearch.data.check.header_fingerprint`), so resolving it costs milliseconds
even for a large dataset and can run in every process that needs it; the cache entry's
key follows from it (:meth:`DatasetConfig.volume_config`).

Example:
    >>> index = read_index("data/brats")                                    # doctest: +SKIP
    >>> plan = resolve_plan(index, DatasetConfig(path="data/brats", dims=3), 2 * 2**30)  # doctest: +SKIP
    >>> plan.patch_size, plan.target_spacing                               # doctest: +SKIP
"""

from __future__ import annotations

from hpsearch.data.check import header_fingerprint
from hpsearch.data.config import DatasetConfig
from hpsearch.data.layouts import DatasetIndex
from hpsearch.data.plan import DEFAULT_BASE_FILTERS, Plan, make_plan
from hpsearch.data.volumes import refuse_defects


def resolve_plan(
    index: DatasetIndex,
    config: DatasetConfig,
    memory_budget_bytes: int,
    *,
    base_filters: int = DEFAULT_BASE_FILTERS,
) -> Plan:
    """The plan a patch-mode job trains with.

    Args:
        index: The dataset (only its headers are read).
        config: The job's dataset section; ``dims`` must be set.
        memory_budget_bytes: Peak training memory allowed per trial.
        base_filters: Filters of the U-Net's first level (the memory estimate's).

    The 2D slice axis is ``config.slice_axis`` (default 2, as in slice mode).

    Raises:
        HpsearchError: A defect of the dataset's declaration, an unreadable header, or
            an explicit ``patch_size`` the U-Net cannot use (see :func:`make_plan`).
    """
    if config.dims is None:
        raise ValueError("resolve_plan() is for patch mode (dataset.dims 2 or 3)")
    refuse_defects(index, index.defects)
    explicit_spacing = config.spacing if isinstance(config.spacing, tuple) else None
    return make_plan(
        header_fingerprint(index),
        config.dims,
        memory_budget_bytes,
        base_filters=base_filters,
        slice_axis=config.slice_axis if config.dims == 2 else None,
        spacing=explicit_spacing,
        resample=config.spacing != "none",
        patch_size=config.patch_size if isinstance(config.patch_size, tuple) else None,
    )
