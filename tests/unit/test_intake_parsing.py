"""Reading intake jobs, without Redis: whatever a job holds, the answer is a
request the ledger can store or a one-line reason (never another exception).

The generated cases are hostile inputs (row R4 of docs/RELIABILITY.md): a normal
run tries a few hundred; ``support/chaos`` tries thousands (``HYPOTHESIS_PROFILE=thorough``,
registered in tests/conftest.py).
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from migratio.intake.jobs import BadJob, parse
from migratio.ledger.store import JobRequest
from migratio.text import is_printable

# A quick look in every run, a long one where support/chaos asks for it.
settings.register_profile("default", deadline=None, max_examples=100)
settings.register_profile("thorough", deadline=None, max_examples=2000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

SITES = {"site-a", "site-b"}
OPENSTACK = "Migratio::Worker::OpenstackOpenstackMigrator"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
# Text of any code point, lone surrogates included (JSON can carry them as \\ud800).
any_text = st.text(st.characters(codec=None, categories=None), max_size=300)
field = any_text | json_values


def _read(body: Any) -> JobRequest | str:
    raw = json.dumps(body).encode()
    try:
        return parse(raw, own_site="site-a", sites=SITES, origin="test")
    except BadJob as exc:
        return exc.reason


def _storable(request: JobRequest) -> None:
    for value in (request.job_id, request.image_id, request.source_site, request.dest_site):
        value.encode("utf-8")  # a lone surrogate would raise here, as in the ledger
        assert is_printable(value) and 0 < len(value) <= 255


@pytest.mark.reliability
@given(worker=field, image=field, destination=field, jid=field | st.just(None))
def test_sidekiq_jobs_of_any_content_are_read_or_refused_with_one_line(
    worker: Any, image: Any, destination: Any, jid: Any
) -> None:
    for klass in (worker, OPENSTACK):
        body = {"class": klass, "args": [image, destination]}
        if jid is not None:
            body["jid"] = jid
        result = _read(body)
        if isinstance(result, str):
            assert result and "\n" not in result and result.isascii()
        else:
            _storable(result)


@pytest.mark.reliability
@given(body=st.dictionaries(st.sampled_from(["class", "image", "to", "from", "jid"]), field))
def test_native_jobs_of_any_content_are_read_or_refused_with_one_line(
    body: dict[str, Any],
) -> None:
    body.setdefault("class", "migratio")
    result = _read(body)
    if isinstance(result, str):
        assert result and "\n" not in result and result.isascii()
    else:
        _storable(result)


def test_a_class_that_is_not_a_string_is_a_bad_job_not_a_type_error() -> None:
    assert _read({"class": ["x"], "args": ["i", "site-b"]}) == (
        "'class' must be a string, got [\"x\"]"
    )


def test_a_lone_surrogate_is_a_bad_job() -> None:
    raw = b'{"class":"migratio","image":"\\ud800","to":"site-b"}'
    try:
        parse(raw, own_site="site-a", sites=SITES, origin="test")
    except BadJob as exc:
        assert exc.reason == "'image' holds control or invalid characters: '\\ud800'"
    else:
        raise AssertionError("a lone surrogate was accepted")


def test_a_job_from_a_destination_only_site_is_a_bad_job() -> None:
    raw = b'{"class":"migratio","image":"i","to":"site-a","from":"site-b"}'
    try:
        parse(raw, own_site="site-a", sites=SITES, sources={"site-a"}, origin="test")
    except BadJob as exc:
        assert exc.reason == (
            "site 'site-b' is a destination only: images migrate to it, not from it"
        )
        assert (exc.image_id, exc.dest_site) == ("i", "site-a")
    else:
        raise AssertionError("a destination-only source was accepted")


def test_a_job_that_is_not_an_object_is_named_in_json_words() -> None:
    assert [_read(body) for body in (None, True, 42, 1.5, "x", ["i", "site-b"])] == [
        "not a JSON object but null",
        "not a JSON object but a boolean",
        "not a JSON object but a number",
        "not a JSON object but a number",
        "not a JSON object but a string",
        "not a JSON object but an array",
    ]


def test_a_job_may_name_the_image_s_previous_version_as_its_base() -> None:
    native = {"class": "migratio", "image": "v2", "to": "site-b", "jid": "j1", "base": "v1"}
    sidekiq = {"class": OPENSTACK, "args": ["v2", "site-b"], "jid": "j2", "base": "v1"}
    for body in (native, sidekiq):
        request = _read(body)
        assert isinstance(request, JobRequest) and request.base_image_id == "v1"
    plain = _read({"class": "migratio", "image": "v2", "to": "site-b", "jid": "j3"})
    assert isinstance(plain, JobRequest) and plain.base_image_id is None
    assert _read({**native, "base": ""}) == "'base' must be a non-empty string, got ''"
    assert _read({**native, "base": 7}) == "'base' must be a non-empty string, got 7"
