"""Property-based tests (hypothesis): arbitrary JSON never breaks the parsers.

Any JSON value in any field of an embeddings request is answered 2xx or 4xx by
`parse_embedding_request` (a `RequestError` with a 4xx status), never another exception;
any value in any key of a distill config file is a `ConfigError` naming the key, or a
valid configuration, never another exception.
"""

from __future__ import annotations

import dataclasses
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serving.server import RequestError, ServerConfig, parse_embedding_request
from tf_minilm.distill.config import DistillConfig
from tf_minilm.model.config import ConfigError

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)
FIELDS = ("input", "model", "encoding_format", "dimensions", "user")
CONFIG = ServerConfig(max_texts_per_request=8, max_chars_per_text=40)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from(FIELDS), JSON | st.text(), max_size=5) | JSON)
def test_any_json_body_is_accepted_or_a_4xx(body):
    try:
        parsed = parse_embedding_request(body, CONFIG, dimension=16)
    except RequestError as err:
        assert 400 <= err.status < 500 and err.message
        return
    assert parsed.texts and all(isinstance(t, str) and t for t in parsed.texts)
    assert parsed.dimensions is None or 1 <= parsed.dimensions <= 16


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(codec="utf-8") | st.just("\ud800"),
                        min_size=1, max_size=10), min_size=1, max_size=4))
def test_texts_with_any_characters_are_accepted_or_400(texts):
    try:
        parse_embedding_request({"input": texts}, CONFIG)
    except RequestError as err:
        assert err.status in (400, 413)
        assert "\ud800" in "".join(texts) or err.status == 413


KEYS = [f.name for f in dataclasses.fields(DistillConfig)]
VALUES = (JSON | st.floats() | st.sampled_from(["nan", "inf", "-1", "1e400", "0x10", "3"])
          | st.integers(min_value=-(2**70), max_value=2**70))


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=12), VALUES, max_size=4))
def test_any_config_file_is_valid_or_a_config_error_naming_the_key(values):
    values.pop("teacher", None)  # a path: checked against the disk, not here
    try:
        config = DistillConfig.from_mapping(values, "config.yaml")
        config.validate()
    except ConfigError as err:
        assert "--" in str(err) or "unknown key" in str(err) or "config.yaml" in str(err)
        return
    for field in dataclasses.fields(DistillConfig):
        value = getattr(config, field.name)
        if isinstance(value, float):
            assert math.isfinite(value), field.name
