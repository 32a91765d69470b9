"""Where an import may read: every path-escape case is refused with a reason, at the
start of an import and on every read of an imported object."""

from __future__ import annotations

import os

import pytest

from deeplens.settings import Settings
from deeplens.sources import SourceRefused, parse_source, reference_source
from deeplens.storage import ReferencingStorage, make_storage


@pytest.fixture
def roots(tmp_path):
    allowed = tmp_path / "shared"
    (allowed / "set").mkdir(parents=True)
    (tmp_path / "private").mkdir()
    (tmp_path / "private" / "secret.jpg").write_bytes(b"\xff\xd8secret")
    return tmp_path, [str(allowed), "s3://photos/archive"]


@pytest.mark.parametrize(("source", "why"), [
    ("{tmp}/shared/set/../../private", "'..'"),
    ("shared/set", "not an absolute path"),
    ("{tmp}/private", "outside the allowed import roots"),
    ("/etc", "outside the allowed import roots"),
    ("{tmp}/shared/link-out", "outside the allowed import roots"),  # a symlink, resolved
    ("s3://other-bucket/archive", "outside the allowed import roots"),
    ("s3://photos/archive2", "outside the allowed import roots"),  # a prefix, not a folder
    ("s3://photos/archive/../private", "'..'"),
    ("s3://photos//archive", "must not start with '/'"),
    ("http://photos.example/archive", "only s3:// and folders"),
])
def test_sources_outside_the_roots_are_refused(roots, source, why) -> None:
    tmp, allowed = roots
    os.symlink(tmp / "private", tmp / "shared" / "link-out")
    with pytest.raises(SourceRefused, match=why):
        parse_source(source.format(tmp=tmp), allowed)


def test_sources_under_the_roots_are_accepted(roots) -> None:
    tmp, allowed = roots
    assert parse_source(f"{tmp}/shared/set", allowed).path == (tmp / "shared/set").resolve()
    assert parse_source("s3://photos/archive/2024", allowed).prefix == "archive/2024"
    with pytest.raises(SourceRefused, match="imports are off"):
        parse_source(f"{tmp}/shared", [])


def test_a_reference_outside_the_roots_is_never_read(roots) -> None:
    """An event names a path; storage checks it on every read, so a forged or stale
    event cannot read another tenant's bytes or the host's files."""
    tmp, allowed = roots
    settings = Settings(data_dir=tmp / "data", imports={"allowed_roots": allowed})
    storage = make_storage(settings)
    assert isinstance(storage, ReferencingStorage)
    for forged in (f"file://{tmp}/private/secret.jpg", f"file://{tmp}/shared/../private/"
                   "secret.jpg", f"tar://{tmp}/private/secret.jpg#0+4", "s3://other/x.jpg"):
        with pytest.raises(SourceRefused):
            storage.get(forged)
    with pytest.raises(ValueError, match="never written"):
        storage.put(f"file://{tmp}/shared/set/new.jpg", b"x")
    (tmp / "shared" / "set" / "a.jpg").write_bytes(b"abc")
    storage.delete(f"file://{tmp}/shared/set/a.jpg")  # the operator's object stays
    assert storage.get(f"file://{tmp}/shared/set/a.jpg") == b"abc"
    with pytest.raises(SourceRefused, match="outside"):
        reference_source(f"file://{tmp}/private/secret.jpg", allowed)
