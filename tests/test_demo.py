"""`edgeiad demo`'s summary, on a run trained on the synthetic set instead of ELPV (the real fit takes minutes)."""

from __future__ import annotations

import shutil

import pytest

pytest.importorskip("torch", reason="the demo trains and exports: needs the [train] extra")


def test_demo_exports_the_run_and_prints_its_backbone_metrics_and_parity(trained_runs, tmp_path, monkeypatch):
    from rich.console import Console

    import edgeiad.engine
    from edgeiad.demo import run_demo

    def fake_train(model, data, out, **_kwargs):
        assert (model, data) == ("patchcore", "elpv-mono")
        shutil.copytree(trained_runs["patchcore"], out)
        return out

    monkeypatch.setattr(edgeiad.engine, "train", fake_train)
    console = Console(record=True, width=200)
    run_demo(tmp_path / "demo", "cpu", console)
    text = console.export_text()
    assert "PatchCore (EfficientNet-Lite1) on ELPV mono" in text  # the run's own backbone, not a fixed title
    assert "image_auroc" in text and "ONNX max map error" in text and "How to read this" in text
    assert (tmp_path / "demo" / "artifact" / "manifest.json").is_file()
    # a second demo into the same folder replaces the first; any other non-empty folder is refused
    run_demo(tmp_path / "demo", "cpu", Console(record=True, width=200))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("user data")
    with pytest.raises(Exception, match="not a previous demo folder"):
        run_demo(tmp_path / "other", "cpu", console)
    assert (tmp_path / "other" / "keep.txt").read_text() == "user data"
