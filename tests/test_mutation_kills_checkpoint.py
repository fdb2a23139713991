"""Tests that kill mutants of resume / checkpoint loading (opmask_fast/training/checkpoint.py) which survived the
other tests in scripts/mutation.py's run (docs/mutation.md). Each docstring names the mutant(s): ``file:line
cosmic-ray operator``, and the mutated code."""

import pytest
import torch

from opmask_fast.config import get_preset
from opmask_fast.modeling import build_model
from opmask_fast.training import checkpoint
from opmask_fast.training.checkpoint import (CheckpointError, check_model_checkpoint, get_rng_state,
                                             load_checkpoint, model_from_checkpoint, save_atomic, set_rng_state)


def test_an_unreadable_file_is_called_empty_only_when_it_is(tmp_path):
    """checkpoint.py:68 ReplaceComparisonOperator_Eq_GtE: ``os.path.getsize(path) == 0`` -> ``>= 0`` (every
    unreadable file would be reported as empty)."""
    empty, junk = tmp_path / "empty.pth", tmp_path / "junk.pth"
    empty.write_bytes(b"")
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="the file is empty"):
        load_checkpoint(str(empty))
    with pytest.raises(CheckpointError, match="not written by torch.save") as e:
        load_checkpoint(str(junk))
    assert "empty" not in str(e.value)


def test_a_dict_without_model_and_meta_names_its_keys():
    """checkpoint.py:87 ReplaceBinaryOperator_Add_Div (``", ".join(...) + (...)`` -> ``/``: a TypeError instead of
    the message) and ReplaceComparisonOperator_Gt_NotEq (``len(state) > 8`` -> ``!= 8``: "..." after a short list)."""
    with pytest.raises(CheckpointError, match=r"\(its keys: a, b, c\)$"):
        check_model_checkpoint({"c": 1, "a": 2, "b": 3}, "x.pth")
    nine = {f"k{i}": i for i in range(9)}
    with pytest.raises(CheckpointError, match=r"its keys: k0, k1, k2, k3, k4, k5, k6, k7 \.\.\.\)$"):
        check_model_checkpoint(nine, "x.pth")
    with pytest.raises(CheckpointError, match=r"its keys: none\)$"):
        check_model_checkpoint({}, "x.pth")


def test_rng_state_touches_the_cuda_generator_of_the_process_gpu_only(monkeypatch):
    """A CPU run never reads or writes a CUDA generator (saving would initialise CUDA in a process that never used it;
    a CPU run's state resumed where CUDA is available must not look one up); a GPU run saves and restores its own
    device's generator only (so a run resumes where fewer GPUs are visible), and an older
    checkpoint's list of every GPU's gives the device's entry."""
    def refuse(*args):
        raise AssertionError("the CUDA RNG state must not be touched")

    marker = torch.tensor([7], dtype=torch.uint8)
    read, written = [], []
    monkeypatch.setattr(torch.cuda, "get_rng_state", refuse)
    monkeypatch.setattr(torch.cuda, "set_rng_state", refuse)
    cpu_state = get_rng_state(torch.device("cpu"))
    assert "cuda" not in cpu_state and "cuda" not in get_rng_state()
    set_rng_state(cpu_state, torch.device("cpu"))
    set_rng_state({**cpu_state, "cuda": marker}, torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: read.append(device) or marker)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: written.append((state, device)))
    gpu = torch.device("cuda", 1)
    state = get_rng_state(gpu)
    assert read == [gpu] and state["cuda"] is marker
    set_rng_state(state, gpu)
    set_rng_state({**state, "cuda": [torch.zeros(1), marker]}, gpu)  # an older checkpoint: every GPU's
    set_rng_state({**state, "cuda": [marker]}, gpu)  # saved with fewer GPUs: nothing to restore for cuda:1
    assert [(s is marker, d) for s, d in written] == [(True, gpu), (True, gpu)]


def test_model_from_checkpoint_reads_the_file_unless_given_its_state(tmp_path, monkeypatch):
    """checkpoint.py:139 AddNot: ``load_checkpoint(path) if state is None else state`` -> ``if not state is None``
    (the file would be read when its state is given, and None checked when it is not)."""
    cfg = get_preset("opmask_r18_tiny")
    torch.manual_seed(3)
    model = build_model(cfg)
    state = {"model": model.state_dict(), "iteration": 1,
             "meta": {"model_config": cfg.to_dict(), "category_ids": [1], "category_names": ["a"]}}
    path = str(tmp_path / "ckpt.pth")
    save_atomic(state, path)
    loaded, meta = model_from_checkpoint(path)
    assert meta["category_names"] == ["a"]
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
    # given its state, the file is not read again
    monkeypatch.setattr(checkpoint, "load_checkpoint", lambda p: pytest.fail("read the file although given its state"))
    _, meta = model_from_checkpoint(str(tmp_path / "gone.pth"), state=state)
    assert meta["category_ids"] == [1]


class _NotATensor:
    pass


def test_a_pickle_of_arbitrary_objects_is_refused(tmp_path):
    """checkpoint.py:66 ReplaceTrueWithFalse: ``torch.load(..., weights_only=True)`` -> ``False`` (a checkpoint
    holding arbitrary pickled objects, which runs code on load, would be read)."""
    path = str(tmp_path / "evil.pth")
    torch.save({"model": {}, "meta": {}, "payload": _NotATensor()}, path)
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        checkpoint.load_checkpoint(path)


def test_stale_temporaries_are_deleted_from_disk(tmp_path):
    """checkpoint.py:46 ZeroIterationForLoop: ``for f in removed`` -> ``for f in []`` (the temporaries would be
    reported but left on disk)."""
    target = tmp_path / "checkpoint.pth"
    stale = [tmp_path / ".checkpoint.pth.tmp-1", tmp_path / ".checkpoint.pth.tmp-2"]
    for f in stale:
        f.write_bytes(b"half")
    (tmp_path / "other.tmp-1").write_bytes(b"keep")
    assert sorted(checkpoint.remove_stale_temporaries(str(target))) == sorted(str(f) for f in stale)
    assert not any(f.exists() for f in stale) and (tmp_path / "other.tmp-1").exists()


def test_model_from_checkpoint_applies_the_overrides(tmp_path):
    """checkpoint.py:145 ZeroIterationForLoop: ``for item in overrides`` -> ``for item in []`` (test-time overrides such
    as ``rpn.post_nms_topk_test=300`` would be ignored)."""
    cfg = get_preset("opmask_r18_tiny")
    cfg.backbone.weights = None
    model = build_model(cfg)
    path = str(tmp_path / "c.pth")
    names = [f"c{i}" for i in range(cfg.num_classes)]
    meta = {"model_config": cfg.to_dict(), "category_ids": list(range(1, cfg.num_classes + 1)),
            "category_names": names}
    torch.save({"model": model.state_dict(), "meta": meta, "iteration": 1}, path)
    loaded, _ = checkpoint.model_from_checkpoint(path, overrides=["rpn.post_nms_topk_test=37"])
    assert loaded.cfg.rpn.post_nms_topk_test == 37
