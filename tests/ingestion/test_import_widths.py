"""An import names no more than its catalog columns hold: a source longer than
``import_jobs.source`` is refused with a clear error before a job is recorded."""

from __future__ import annotations

import pytest

from deeplens.sources import MAX_SOURCE_LENGTH, SourceRefused, parse_source


def test_a_source_longer_than_the_job_column_is_refused(tmp_path) -> None:
    deep = tmp_path
    for part in ("a" * 200, "b" * 200, "c" * 200):
        deep = deep / part
    deep.mkdir(parents=True)
    assert len(str(deep)) > MAX_SOURCE_LENGTH
    with pytest.raises(SourceRefused, match="an import job records at most 512"):
        parse_source(str(deep), [str(tmp_path)])
    assert parse_source(str(tmp_path / ("a" * 200)), [str(tmp_path)]).kind == "folder"
    with pytest.raises(SourceRefused, match="at most 512"):
        parse_source("s3://bucket/" + "k" * 600, ["s3://bucket"])
