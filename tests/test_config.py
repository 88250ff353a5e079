"""Settings come from the environment, are checked, and name the variable at fault."""

from __future__ import annotations

import pytest

from stream_app.config import CLUSTERERS, Settings
from stream_app.segmentation import river_clusterer


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
    ("COMMIT_INTERVAL_S", "0"),
])
def test_bad_settings_name_the_variable(name, value):
    with pytest.raises(ValueError, match=name):
        Settings.from_env({name: value})


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


def test_every_setting_is_in_the_readme_configuration_table():
    import re
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme[readme.index("## Configuration"):readme.index("## Interface")]
    documented = set(re.findall(r"^\| `([A-Z_]+)` \|", section, re.M))
    assert documented == set(Settings.env_names().values())
