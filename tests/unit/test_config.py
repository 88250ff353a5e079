"""Settings come from the environment, are checked, and name the variable at fault."""

from __future__ import annotations

import pytest

from stream_app.config import CLUSTERERS, Settings
from stream_app.model.segmentation import river_clusterer
from stream_app.worker.options import pipeline_options


def test_settings_read_typed_values_from_the_environment():
    s = Settings.from_env({"SEGMENTS_K": "8", "SEGMENT_MARGIN": "0.25",
                           "SEGMENT_CLUSTERER": "clustream", "STREAM_APP_EMBEDDED_BROKER": "yes",
                           "MODEL_SAMPLE_CUSTOMERS": "900", "SEGMENT_FEATURES": ""})
    assert (s.segments_k, s.segment_margin, s.segment_clusterer) == (8, 0.25, "clustream")
    assert s.embedded_broker is True and s.model_sample_customers == 900
    assert s.segment_features == Settings().segment_features  # empty means default


@pytest.mark.parametrize("name, value", [
    ("SEGMENTS_K", "1"), ("SEGMENTS_K", "many"), ("SEGMENT_MARGIN", "1.0"),
    ("SEGMENT_CLUSTERER", "dbstream"), ("MODEL_SAMPLE_CUSTOMERS", "0"),
    ("KMEANS_HALFLIFE", "0"), ("ROCKSDB_BLOCK_CACHE_MB", "0"), ("LOG_FORMAT", "xml"),
    ("COMMIT_INTERVAL_S", "0"), ("EVENT_TS_MIN", "last year"), ("EVENT_TS_MIN", "1990"),
    ("EVENT_TS_MIN", "1990-13-01"), ("EVENT_TS_MIN", "3000-01-01"),
])
def test_bad_settings_name_the_variable(name, value):
    with pytest.raises(ValueError, match=name):
        Settings.from_env({name: value})


def test_event_ts_min_is_an_iso_date_or_date_time_utc_unless_zoned():
    from stream_app.core.pipeline import CustomerPipeline
    from stream_app.core.validation import MIN_TS_MS

    default = Settings.from_env({})
    assert default.event_ts_min == "1980-01-01"
    assert default.event_ts_min_ms == MIN_TS_MS == (10 * 365 + 2) * 86_400_000  # 1980-01-01Z
    jan_1_1990_ms = (20 * 365 + 5) * 86_400_000
    assert Settings.from_env({"EVENT_TS_MIN": "1990-01-01"}).event_ts_min_ms == jan_1_1990_ms
    assert Settings.from_env({"EVENT_TS_MIN": "1990-01-01T00:00:00Z"}).event_ts_min_ms == (
        jan_1_1990_ms)
    zoned = Settings.from_env({"EVENT_TS_MIN": "1990-01-01T01:00:00+02:00"})
    assert zoned.event_ts_min_ms == jan_1_1990_ms - 3_600_000
    # The worker's decoder takes the setting.
    assert CustomerPipeline(pipeline_options(zoned)).decoder.min_ts_ms == jan_1_1990_ms - 3_600_000


def test_bad_event_ts_min_says_what_is_expected():
    with pytest.raises(ValueError, match=r"EVENT_TS_MIN must be an ISO-8601 date .*'1990'"):
        Settings.from_env({"EVENT_TS_MIN": "1990"})


def test_rocksdb_tables_get_bounded_memory_and_other_stores_no_options():
    assert Settings.from_env({"TABLE_STORE": "memory://"}).table_options() is None
    s = Settings.from_env({"TABLE_STORE": "rocksdb://", "ROCKSDB_WRITE_BUFFER_MB": "4",
                           "ROCKSDB_BLOCK_CACHE_MB": "16"})
    options = s.table_options()
    assert options == {"write_buffer_size": 4 << 20, "max_write_buffer_number": 2,
                       "block_cache_size": 16 << 20}
    assert s.table_options() is not options  # Faust's store pops keys from its copy


def test_every_setting_has_its_own_variable():
    names = Settings.env_names()
    assert len(set(names.values())) == len(names)


@pytest.mark.parametrize("name", CLUSTERERS)
def test_every_configurable_clusterer_exists(name):
    assert hasattr(river_clusterer(name, k=4, halflife=0.01, seed=1), "learn_one")


def test_every_setting_is_in_the_configuration_table():
    """docs/configuration.md's table, as the docs build generates it from the metadata."""
    import importlib.util
    import re
    from pathlib import Path

    docs = Path(__file__).parents[2] / "docs"
    spec = importlib.util.spec_from_file_location("docs_hook_configuration",
                                                  docs / "hooks" / "configuration.py")
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    page = hook.on_page_markdown((docs / "configuration.md").read_text(), None, None, None)
    documented = set(re.findall(r"^\| `([A-Z_]+)` \|", page, re.M))
    assert documented == set(Settings.env_names().values())
