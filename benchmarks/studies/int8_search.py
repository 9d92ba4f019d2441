"""Offline study (#20): PatchCore's region search GEMM in INT8, before any graph work.

It was run when the INT8 artifacts quantized the backbone only, and led to the lifted search that ONNX Runtime and
OpenVINO INT8 exports now quantize (models/patchcore/lifted.py); benchmarks/studies/int8_exports.py measures the
exported artifacts.

The graph's search is one GEMM per region of the lifted queries (projection.py) against an augmented bank
[−2b, |b|²]: per-channel or per-tensor weight scales of that matrix are set by the |b|² column, which is why
quantizing "the distance part" collapsed AUROC. This study keeps |q|² and |b|² in fp32 and quantizes only the cross
term q·b, the way an INT8 graph would compute it:

- `auroc RUN...`: image AUROC (and pixel AUROC / AUPRO@0.3 where the set has masks) of the fitted run's eager model
  with the exact search, a dynamic INT8 cross term (per-image asymmetric u8 queries, as DynamicQuantizeLinear does,
  against per-tensor symmetric int8 bank rows) and a static one (the query range calibrated per region on the first
  32 training images, as the INT8 export calibrates, and clipped to it).
- `gemm`: ONNX Runtime, one thread, one region's GEMM + min (576 queries × 100 lifted dimensions × 1,352 rows, the
  ELPV mono default) in fp32 (the graph's form), as DynamicQuantizeLinear + MatMulInteger, and as static QDQ with
  per-column and with per-tensor weight scales; each timed in turn.

    python benchmarks/studies/int8_search.py auroc STUDY/cases/patchcore-default/*/run
    python benchmarks/studies/int8_search.py gemm
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

MODES = ("exact", "dynamic", "static")


def _quantized_search(mode: str, ranges: dict, steps: int = 127):
    """`search(N×D×h×w block, bank rows, basis)` for PatchCore's `patch_scores`, with the cross term in `mode`; the
    bank rows keep `steps` steps on each side of zero (127: int8; 64: ONNX Runtime's 7-bit `reduce_range`)."""
    import torch

    from edgeiad.models.patchcore.projection import project

    def search(embedding, bank, basis):
        count, dim, height, width = embedding.shape
        queries, rows = project(embedding.permute(0, 2, 3, 1).reshape(-1, dim), bank, basis)
        if mode == "calibrate":
            low, high = ranges.get(bank.data_ptr(), (0.0, 0.0))
            ranges[bank.data_ptr()] = (min(low, float(queries.min())), max(high, float(queries.max())))
            return torch.zeros(count, 1, height, width)
        if mode == "exact":
            cross = queries @ rows.T
        else:
            if mode == "dynamic":
                low, high = min(float(queries.min()), 0.0), max(float(queries.max()), 0.0)
            else:
                low, high = ranges[bank.data_ptr()]
            scale = (high - low) / 255
            zero = round(-low / scale)
            levels = (torch.round(queries / scale) + zero).clamp(0, 255) - zero  # clipped to the range
            bank_scale = rows.abs().max() / steps
            cross = (levels @ torch.round(rows / bank_scale).T) * (scale * bank_scale)
        squared = (queries * queries).sum(-1, keepdim=True) + (rows * rows).sum(-1)[None] - 2 * cross
        return torch.sqrt(squared.min(dim=1).values.clamp(min=0)).reshape(count, 1, height, width)

    return search


def _scorer(model, searches: dict, extra: dict):
    """`infer(images) -> (maps, scores)` of the exact search for `score_with`; the other searches' maps and scores
    are appended to `extra[mode]` as it goes (one backbone pass serves every search)."""
    import torch

    from edgeiad.models.patchcore.coarse import fused_score
    from edgeiad.models.patchcore.torch_model import chunked_distances

    def infer(images: np.ndarray):
        with torch.no_grad():
            image = torch.from_numpy(images)
            features = model.backbone(image)
            embedding = model.embed(image, features)
            coarse = model.coarse_scores(features, model.coarse_bank, chunked_distances) if model.coarse else None
            found = {}
            for mode, search in searches.items():
                anomaly_map, score = model.to_map(model.patch_scores(embedding, model.memory_bank, search))
                if coarse is not None:
                    score = fused_score(score, coarse, model.coarse_calibration)
                found[mode] = (anomaly_map[:, 0].numpy(), score.numpy())
        for mode, (maps, scores) in extra.items():
            maps.extend(found[mode][0])
            scores.append(found[mode][1])
        return found["exact"]

    return infer


def auroc(args) -> None:
    import torch

    from edgeiad.data.loader import read_batches
    from edgeiad.engine import compute_metrics, score_with
    from edgeiad.runs import load_model, run_dataset

    torch.set_num_threads(args.threads)
    for run in args.runs:
        record, model = load_model(run)
        if model.config.model != "patchcore" or not model.projected:
            raise SystemExit(f"{run}: the study needs a PatchCore run with the projected search (search_dim > 0)")
        dataset, preprocessing = run_dataset(record), model.config.preprocessing()
        ranges: dict = {}
        with torch.no_grad():
            for batch in read_batches(dataset.train[:32], preprocessing, 8):
                model.patch_scores(model.embed(torch.from_numpy(batch.images)), model.memory_bank,
                                   _quantized_search("calibrate", ranges))  # fmt: skip
        searches = {mode: _quantized_search(mode, ranges, args.levels) for mode in MODES}
        extra = {mode: ([], []) for mode in MODES[1:]}
        infer = _scorer(model, searches, extra)
        started = time.perf_counter()
        scored = score_with(infer, dataset.test, preprocessing, with_masks=dataset.has_masks)
        cells = []
        for mode in MODES:
            if mode != "exact":
                scored.scores = np.concatenate(extra[mode][1])
                if dataset.has_masks:
                    scored.maps = extra[mode][0]
            metrics = compute_metrics(scored)
            cell = f"{metrics['image_auroc']:.4f}"
            if dataset.has_masks:
                cell += f" / {metrics['pixel_auroc']:.4f} / {metrics['aupro']:.4f}"
            cells.append(f"{mode} {cell}")
        print(f"{dataset.name}: {'  '.join(cells)}  ({time.perf_counter() - started:.0f} s)", flush=True)


def gemm(args) -> None:
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    queries, dim, rows = 576, 100, 1352
    q = rng.standard_normal((queries, dim)).astype(np.float32)
    bank = rng.standard_normal((rows, dim)).astype(np.float32)
    norms = (bank * bank).sum(1).astype(np.float32)
    column_scale = np.abs(bank).max(1) / 127
    per_column = np.round(bank / column_scale[:, None]).astype(np.int8).T.copy()
    tensor_scale = np.float32(np.abs(bank).max() / 127)
    per_tensor = np.round(bank / tensor_scale).astype(np.int8).T.copy()
    low, high = float(q.min()), float(q.max())
    scale, zero = np.float32((high - low) / 255), np.uint8(round(-low / ((high - low) / 255)))
    init = numpy_helper.from_array
    node = helper.make_node
    minimum = node("ReduceMin", ["s"], ["m"], axes=[1], keepdims=0)
    static_in = [
        node("QuantizeLinear", ["q", "qs", "qz"], ["qq"]),
        node("DequantizeLinear", ["qq", "qs", "qz"], ["qd"]),
    ]
    static_init = [init(scale, "qs"), init(zero, "qz"), init(norms, "norms")]
    graphs = {
        "fp32, augmented bank (the graph today)": (
            [node("Concat", ["q", "one"], ["qa"], axis=1), node("MatMul", ["qa", "w"], ["s"]), minimum],
            [
                init(np.ones((queries, 1), np.float32), "one"),
                init(np.concatenate([-2 * bank, norms[:, None]], 1).T.copy(), "w"),
            ],
        ),
        "dynamic: DynamicQuantizeLinear + MatMulInteger": (
            [
                node("DynamicQuantizeLinear", ["q"], ["qu", "qs", "qz"]),
                node("MatMulInteger", ["qu", "w", "qz"], ["si"]),
                node("Cast", ["si"], ["sf"], to=TensorProto.FLOAT),
                node("Mul", ["qs", "ws"], ["sc"]),
                node("Mul", ["sf", "sc"], ["sm"]),
                node("Add", ["sm", "norms"], ["s"]),
                minimum,
            ],
            [init(per_column, "w"), init((-2 * column_scale).astype(np.float32), "ws"), init(norms, "norms")],
        ),
        "static QDQ, per-column weights": (
            [
                *static_in,
                node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=1),
                node("MatMul", ["qd", "wd"], ["sm"]),
                node("Add", ["sm", "norms"], ["s"]),
                minimum,
            ],
            [
                *static_init,
                init(per_column, "w"),
                init((-2 * column_scale).astype(np.float32), "ws"),
                init(np.zeros(rows, np.int8), "wz"),
            ],
        ),
        "static QDQ, per-tensor weights": (
            [
                *static_in,
                node("DequantizeLinear", ["w", "ws", "wz"], ["wd"]),
                node("MatMul", ["qd", "wd"], ["sm"]),
                node("Mul", ["sm", "two"], ["st"]),
                node("Add", ["st", "norms"], ["s"]),
                minimum,
            ],
            [
                *static_init,
                init(per_tensor, "w"),
                init(tensor_scale, "ws"),
                init(np.int8(0), "wz"),
                init(np.float32(-2), "two"),
            ],
        ),
    }
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    sessions = {}
    for name, (nodes, initializers) in graphs.items():
        inputs = [helper.make_tensor_value_info("q", TensorProto.FLOAT, [queries, dim])]
        outputs = [helper.make_tensor_value_info("m", TensorProto.FLOAT, None)]
        graph = helper.make_graph(nodes, "search", inputs, outputs, initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        sessions[name] = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    exact = next(iter(sessions.values())).run(None, {"q": q})[0]
    times = {name: [] for name in sessions}
    for _ in range(args.rounds):
        for name, session in sessions.items():
            started = time.perf_counter()
            for _ in range(10):
                session.run(None, {"q": q})
            times[name].append((time.perf_counter() - started) * 100)
    reference = float(np.median(next(iter(times.values()))))
    for name, session in sessions.items():
        error = float(np.abs(session.run(None, {"q": q})[0] - exact).max() / np.abs(exact).max())
        p50 = float(np.median(times[name]))
        print(f"{name:48s} p50 {p50:6.3f} ms  ×{p50 / reference:.2f}  max error of the min {error:.4f} of its range")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("auroc")
    one.add_argument("runs", nargs="+", type=Path)
    one.add_argument("--threads", type=int, default=1)
    one.add_argument("--levels", type=int, default=127, help="bank steps each side of 0: 127 int8, 64 7-bit")
    two = sub.add_parser("gemm")
    two.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    auroc(args) if args.command == "auroc" else gemm(args)


if __name__ == "__main__":
    main()
