"""The one storage module: local paths and URIs through the same calls."""

from road_ray import storage


def test_paths_and_uris(tmp_path):
    assert not storage.is_uri(tmp_path) and storage.is_uri("s3://bucket/x")
    assert storage.scheme("gs://b/x") == "gs" and storage.scheme("/tmp/x") == ""
    assert storage.join("s3://b/x/", "y", "z") == "s3://b/x/y/z"
    assert storage.with_scheme("s3://b/exp", "b/exp/run/checkpoint_1") == "s3://b/exp/run/checkpoint_1"
    assert storage.with_scheme(f"file://{tmp_path}", f"{tmp_path}/c") == f"file://{tmp_path}/c"
    assert storage.with_scheme(str(tmp_path), f"{tmp_path}/c") == f"{tmp_path}/c"
    assert storage.absolute("~/x").startswith("/") and storage.absolute("s3://b/x") == "s3://b/x"


def test_text_round_trip_local_and_file_uri(tmp_path):
    for base in (str(tmp_path / "a"), f"file://{tmp_path}/b"):
        target = storage.join(base, "sub", "note.txt")
        assert storage.read_text(target) is None and not storage.exists(target)
        storage.write_text(target, "hello")
        assert storage.read_text(target) == "hello" and storage.exists(target)
        assert storage.is_dir(storage.join(base, "sub"))


def test_copy_to_local(tmp_path):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "f.txt").write_text("x")
    assert storage.copy_to_local(str(tmp_path / "ckpt")) == str(tmp_path / "ckpt")
    local = storage.copy_to_local(f"file://{tmp_path}/ckpt")
    assert open(f"{local}/f.txt").read() == "x"
