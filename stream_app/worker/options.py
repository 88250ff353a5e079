"""The options of the pure parts, from the settings: one function per option type.

The domain (:mod:`stream_app.core`) and the numerics (:mod:`stream_app.model`) never read
the environment; they take plain option objects. The worker and the tools build those here,
so that each setting is mapped to an option in exactly one place.

>>> settings = Settings(segments_k=8, segment_margin=0.3, allowed_lateness_s=60.0)
>>> pipeline_options(settings).margin, pipeline_options(settings).lateness_s
(0.3, 60.0)
>>> learner_options(settings).k, learner_options(settings).clusterer
(8, 'kmeans')
"""

from __future__ import annotations

from stream_app.config import Settings
from stream_app.core.pipeline import PipelineOptions
from stream_app.model.options import LearnerOptions


def pipeline_options(settings: Settings) -> PipelineOptions:
    """The :class:`~stream_app.core.pipeline.PipelineOptions` of ``settings``."""
    return PipelineOptions(
        app_id=settings.app_id,
        features=settings.segment_features,
        margin=settings.segment_margin,
        rejudge_margin=settings.segment_rejudge_margin,
        confirmations=settings.segment_confirmations,
        min_events=settings.segment_min_events,
        lateness_s=settings.allowed_lateness_s,
        sample_rate=settings.learn_sample_rate,
        sample_interval_hours=settings.learn_sample_interval_hours,
        max_message_bytes=settings.max_message_bytes,
        max_future_skew_s=settings.max_future_skew_s,
        min_ts_ms=settings.event_ts_min_ms,
        pseudonym_key=settings.pseudonym_key,
    )


def learner_options(settings: Settings) -> LearnerOptions:
    """The :class:`~stream_app.model.options.LearnerOptions` of ``settings``."""
    return LearnerOptions(
        features=settings.segment_features,
        k=settings.segments_k,
        warmup=settings.model_warmup_samples,
        halflife=settings.kmeans_halflife,
        seed=settings.model_seed,
        sample=settings.model_sample_customers,
        refine_every=settings.model_refine_every,
        rescore_share=settings.rescore_min_moved,
        clusterer=settings.segment_clusterer,
        min_share=settings.segment_min_share,
    )
