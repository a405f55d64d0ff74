"""The dataset registry: it names the schema's datasets, and every remote entry is fully and consistently declared."""

from __future__ import annotations

import re

import pytest

from pipeline.config import DATASETS
from pipeline.data.registry import REGISTRY, DatasetError, get_dataset

SHA256 = re.compile(r"[0-9a-f]{64}")


def test_registry_names_the_datasets_the_params_schema_allows() -> None:
    assert tuple(REGISTRY) == DATASETS
    assert all(spec.name == name for name, spec in REGISTRY.items())


@pytest.mark.parametrize("name", [name for name, spec in REGISTRY.items() if spec.origin == "remote"])
def test_remote_entries_declare_digests_sources_and_every_split_file(name: str) -> None:
    spec = REGISTRY[name]
    declared = {raw_file.name for raw_file in spec.files}
    assert spec.sources and all(url.startswith(("http://", "https://")) and url.endswith("/") for url in spec.sources)
    for raw_file in spec.files:
        assert SHA256.fullmatch(raw_file.sha256)
        assert raw_file.content_sha256 is None or SHA256.fullmatch(raw_file.content_sha256)
    used = {name for pair in spec.splits.values() for name in pair if name is not None}
    assert used == declared
    assert "train" in spec.splits and "test" in spec.splits
    assert len({raw_file.sha256 for raw_file in spec.files}) == len(spec.files)


def test_known_digests_of_the_originals() -> None:
    mnist = {f.name: f.sha256 for f in REGISTRY["mnist"].files}
    assert mnist["train-images-idx3-ubyte.gz"] == "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"
    fashion = {f.name: f.content_sha256 for f in REGISTRY["fashion_mnist"].files}
    assert fashion["t10k-labels-idx1-ubyte.gz"] == "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"
    assert REGISTRY["binarized_mnist"].binary and set(REGISTRY["binarized_mnist"].splits) == {"train", "valid", "test"}


def test_labelled_entries_name_their_classes() -> None:
    for spec in REGISTRY.values():
        if spec.class_names:
            assert len(spec.class_names) == spec.num_classes


def test_unknown_dataset_suggests_the_closest_name() -> None:
    with pytest.raises(DatasetError, match=r"'mnsit'.*did you mean 'mnist'"):
        get_dataset("mnsit")
    assert get_dataset("fashion_mnist").format == "idx"
