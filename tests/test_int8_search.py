"""PatchCore's search with its banks lifted to constants (models/patchcore/lifted.py), which INT8 exports quantize."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch", reason="the lifted search needs the [train] extra")

from edgeiad.errors import ArtifactError  # noqa: E402
from edgeiad.models.patchcore.lifted import LiftedSearch, lifted_distances  # noqa: E402
from edgeiad.models.patchcore.projection import principal_bases  # noqa: E402
from edgeiad.models.patchcore.torch_model import bank_distances, chunked_distances, nearest_distances  # noqa: E402

SIZES = [9, 14, 11, 7]


class _Banks(LiftedSearch, torch.nn.Module):
    """The attributes LiftedSearch reads, without a backbone."""

    def __init__(self, bank, parts: int, bases=None) -> None:
        super().__init__()
        self.config = SimpleNamespace(regions=parts, region_rows=SIZES if parts > 1 else [], region_margin=1)
        self.register_buffer("memory_bank", bank)
        self.projected = bases is not None
        if self.projected:
            self.register_buffer("search_basis", bases)


@pytest.mark.parametrize("projected", [False, True], ids=["exact", "projected"])
@pytest.mark.parametrize("parts", [1, 2], ids=["one bank", "2x2 regions"])
def test_the_lifted_search_gives_the_graph_search(projected, parts):
    generator = torch.Generator().manual_seed(3)
    embedding, bank = torch.randn(2, 12, 10, 12, generator=generator), torch.randn(sum(SIZES), 12, generator=generator)
    sizes = SIZES if parts > 1 else [sum(SIZES)]
    bases = principal_bases(bank, sizes, 4) if projected else None
    if projected:
        bases[:, 0, -1] = 0.3  # γ, as `with_agreement` would set it
    banks = _Banks(bank, parts, bases)
    expected = bank_distances(embedding, bank, banks.config, nearest_distances, bases)
    assert banks.lift_search() == [f"lifted_weight_{i}" for i in range(len(sizes))]
    weights = [getattr(banks, f"lifted_weight_{i}") for i in range(len(sizes))]
    assert [tuple(w.shape) for w in weights] == [((4 + 3) if projected else 12, rows) for rows in sizes]
    lifted = bank_distances(embedding, bank, banks.config, lifted_distances, banks.lifted_banks())
    torch.testing.assert_close(lifted, expected, rtol=1e-5, atol=1e-5)
    eager = bank_distances(embedding, bank, banks.config, chunked_distances, bases)
    torch.testing.assert_close(lifted, eager, rtol=1e-5, atol=1e-5)
    # The lifted search reads its own constants, not the bank it is handed: the graph drops the bank.
    zeros = bank_distances(embedding, torch.zeros_like(bank), banks.config, lifted_distances, banks.lifted_banks())
    torch.testing.assert_close(zeros, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["patchcore", "ensemble"])
def test_fitted_models_score_the_same_once_lifted(trained_runs, name):
    from edgeiad.runs import load_model

    _record, model = load_model(trained_runs[name])
    image = torch.randn(2, 3, *model.image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(image)
        names = model.lift_search()
        after = model(image)
        eager = model.infer(image)  # eager evaluation keeps the chunked search over the bank
    assert names == [*(f"lifted_weight_{i}" for i in range(4)), "lifted_weight_coarse"]  # 2 × 2 regions, coarse
    for one, two, three in zip(before, after, eager):
        torch.testing.assert_close(two, one, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(three, one, rtol=1e-5, atol=1e-4)


def test_search_matmuls_refuse_a_graph_that_does_not_read_each_constant_once(tmp_path):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgeiad.export.onnx import search_matmuls

    weight = numpy_helper.from_array(np.ones((3, 5), np.float32), "bases.0.lifted_weight_0")
    nodes = [helper.make_node("MatMul", ["q", weight.name], ["s"], name="search_0")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("q", TensorProto.FLOAT, [4, 3])],
        [helper.make_tensor_value_info("s", TensorProto.FLOAT, [4, 5])], [weight],
    )  # fmt: skip
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph), str(path))
    assert search_matmuls(path, ("lifted_weight_0",)) == (["search_0"], ["bases.0.lifted_weight_0"])
    assert search_matmuls(path, ()) == ([], [])
    with pytest.raises(ArtifactError, match=r"lifted_weight_1.*not each read by one MatMul.*export fp32"):
        search_matmuls(path, ("lifted_weight_0", "lifted_weight_1"))


def test_openvino_int8_quantizes_the_search_cross_term_and_scope_backbone_keeps_it_fp32(trained_runs, tmp_path, capsys):
    """OpenVINO INT8 takes the lifted MatMuls (4 region banks, the coarse bank) out of NNCF's ignored scope, and
    only those: the export refuses a FakeQuantize on any other scoring op. `--int8-scope backbone` keeps the whole
    search fp32."""
    import json

    ov = pytest.importorskip("openvino", reason="OpenVINO export needs the [openvino] extra")
    pytest.importorskip("nncf", reason="OpenVINO INT8 needs nncf (the [openvino] extra)")
    from edgeiad.export import export_run

    from .test_cli import run_cli

    artifact = export_run(trained_runs["patchcore"], "openvino", "int8", "baked", "1", out=tmp_path / "ov")
    manifest = json.loads((artifact / "manifest.json").read_text())
    int8 = manifest["export"]["openvino"]["int8"]
    assert int8["search_matmuls"] == 5 and int8["method"].endswith("backbone and search cross term")
    assert manifest["parity"]["passed"] is True
    model = ov.Core().read_model(str(artifact / "model.xml"))

    def source(op, index):
        return op.input(index).get_source_output().get_node()

    def int8_weight(op):  # saved IRs store FakeQuantized weights as an i8 Constant, a Convert and a scale Multiply
        scale = source(op, 1)
        convert = source(scale, 0) if scale.get_type_name() == "Multiply" else None
        constant = source(convert, 0) if convert is not None and convert.get_type_name() == "Convert" else None
        return constant is not None and constant.get_element_type() == ov.Type.i8

    matmuls = [op for op in model.get_ops() if op.get_type_name() == "MatMul"]
    quantized = [op for op in matmuls if source(op, 0).get_type_name() == "FakeQuantize" and int8_weight(op)]
    assert len(quantized) == 5  # 4 region banks and the coarse bank
    assert not [op for op in matmuls if op not in quantized and source(op, 0).get_type_name() == "FakeQuantize"]
    for op in quantized:  # the scores leave in float: |b|² is subtracted from them unquantized
        consumers = [port.get_node().get_type_name() for port in op.output(0).get_target_inputs()]
        assert consumers == ["Subtract"]
        # the rounded queries feed the MatMul alone (|q|² comes from the fp32 tensors)
        assert [port.get_node().get_type_name() for port in source(op, 0).output(0).get_target_inputs()] == ["MatMul"]

    code, out, err = run_cli(
        ["export", "--run", trained_runs["patchcore"], "--target", "openvino", "--precision", "int8", "--batch", "1",
         "--int8-scope", "backbone", "--out", tmp_path / "plain"], capsys,
    )  # fmt: skip
    assert code == 0, err
    plain = json.loads((tmp_path / "plain" / "manifest.json").read_text())["export"]["openvino"]["int8"]
    assert plain["search_matmuls"] == 0 and plain["method"].endswith("backbone only")


@pytest.mark.parametrize("target", ["onnx", "openvino"])
def test_int8_scope_search_quantizes_the_search_beside_an_fp32_backbone(trained_runs, tmp_path, target):
    import json

    if target == "openvino":
        pytest.importorskip("nncf", reason="OpenVINO INT8 needs nncf (the [openvino] extra)")
    from edgeiad.export import export_run

    artifact = export_run(
        trained_runs["patchcore"], target, "int8", "baked", "1", out=tmp_path / "s", int8_scope="search"
    )
    manifest = json.loads((artifact / "manifest.json").read_text())
    export = manifest["export"]
    assert export["int8_kept_fp32"] == ["feature_extractor"] and manifest["parity"]["passed"] is True
    if target == "openvino":
        int8 = export["openvino"]["int8"]
        assert int8["method"].endswith("search cross term only, backbone fp32") and int8["search_matmuls"] == 5
        assert int8["fake_quantize"] == 5  # one per search MatMul, on its queries; none in the backbone
        return
    import onnx

    graph = onnx.load(str(artifact / "model.onnx")).graph
    producers = {out: node for node in graph.node for out in node.output}
    readers = sorted(
        node.op_type for node in graph.node for name in node.input
        if name in producers and producers[name].op_type == "DequantizeLinear"
    )  # fmt: skip
    assert readers == ["MatMul"] * 10  # queries and weights of the 5 search MatMuls; no Conv reads an int8 weight
    assert export["int8"].startswith("static QDQ U8S8") and "search cross term only" in export["int8"]


@pytest.mark.parametrize(
    ("model", "target", "precision", "stats", "scope", "message"),
    [
        ("patchcore", "onnx", "int8", "baked", "everything", r"int8-scope .everything. is invalid: use all"),
        ("patchcore", "onnx", "fp32", "baked", "search", r"applies to --precision int8 only"),
        ("padim", "onnx", "int8", "baked", "search", r"padim has no nearest-neighbour search.*--int8-scope all or"),
        ("patchcore", "trt", "int8", "baked", "search", r"TensorRT keeps the search fp32"),
        ("patchcore", "onnx", "int8", "sidecar", "search", r"sidecar bank is a graph input.*--stats baked"),
    ],
)
def test_int8_scopes_that_cannot_be_honoured_are_refused_before_anything_is_written(
    trained_runs, tmp_path, model, target, precision, stats, scope, message
):
    from edgeiad.errors import ConfigError
    from edgeiad.export import export_run

    with pytest.raises(ConfigError, match=message):
        export_run(trained_runs[model], target, precision, stats, "1", out=tmp_path / "x", int8_scope=scope)
    assert not (tmp_path / "x").exists()
