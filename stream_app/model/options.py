"""What the online learner is built with: :class:`LearnerOptions` and :data:`CLUSTERERS`.

Plain values, no environment: the worker and the tools fill them from their settings
(``stream_app.worker.options.learner_options``), a test or a notebook writes them out.
This module imports nothing but the standard library, so that ``stream_app.config`` can
check ``SEGMENT_CLUSTERER`` against :data:`CLUSTERERS` without loading River and NumPy.

>>> options = LearnerOptions(features="orders_90d:log1p,app_share_30d", k=2, warmup=4,
...                          halflife=0.02, seed=1, sample=100, refine_every=0,
...                          rescore_share=0.02, clusterer="kmeans", min_share=0.0)
>>> options.k, options.clusterer in CLUSTERERS
(2, True)
"""

from __future__ import annotations

from dataclasses import dataclass

#: River clusterers the learner can run (see :func:`stream_app.model.segmentation.river_clusterer`).
CLUSTERERS = ("kmeans", "streamkmeans", "clustream")


@dataclass(frozen=True, kw_only=True)
class LearnerOptions:
    """How the single online learner learns (:func:`~stream_app.model.segmentation.learner_for`).

    Every option is a parameter of :class:`~stream_app.model.segmentation.SegmentLearner`;
    the setting each comes from in a worker is named in parentheses.

    Parameters
    ----------
    features
        Feature specification of the clustering vector: ``name[:transform[:weight]]``
        items separated by commas (``SEGMENT_FEATURES``, see
        :class:`~stream_app.model.segmentation.FeatureTransform`). Ignored when the learner
        resumes from a snapshot, which names its own features.
    k
        Number of micro-segments (``SEGMENTS_K``). Ignored when resuming: a snapshot has
        its own.
    warmup
        Vectors buffered before the first centres are chosen; 0 means ``20 * k``
        (``MODEL_WARMUP_SAMPLES``). Ignored when resuming.
    halflife
        River ``KMeans`` step towards each new vector (``KMEANS_HALFLIFE``).
    seed
        Seed of the warm start and of the clusterer: equal seeds and samples give equal
        models in any process (``MODEL_SEED``).
    sample
        Customers kept in the sample that refinements and quality figures use
        (``MODEL_SAMPLE_CUSTOMERS``).
    refine_every
        Learned vectors between two refinements; 0 means ``max(1000, 20 * k)``
        (``MODEL_REFINE_EVERY``).
    rescore_share
        A version asks the workers to re-score every customer when at least this share of
        the learner's customer sample changed segment since the last version that asked
        (``RESCORE_MIN_MOVED``).
    clusterer
        One of :data:`CLUSTERERS` (``SEGMENT_CLUSTERER``).
    min_share
        Least share of the customer sample a segment may hold after a refinement; smaller
        ones are revived elsewhere under a new id, 0 for no minimum
        (``SEGMENT_MIN_SHARE``).
    """

    features: str
    k: int
    warmup: int
    halflife: float
    seed: int
    sample: int
    refine_every: int
    rescore_share: float
    clusterer: str
    min_share: float
