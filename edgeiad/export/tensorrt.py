"""Build TensorRT 10 engines from the exported ONNX, now (TensorRT present) or later on the device (deferred).

int8 uses the Q/DQ nodes of a backbone-quantized ONNX, else implicit entropy calibration (deprecated in
TensorRT 10, still available). Scoring layers are pinned to fp32 and TF32 is off: the distance
||q||^2 - 2 q.b + ||b||^2 cancels catastrophically in fp16/int8/TF32.
"""

from __future__ import annotations

import copy
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from ..errors import ArtifactError, ConfigError, MissingExtraError, require
from .openvino import GraphNode, default_seeds, partition_scoring
from .trt_check import batch_profile

PRECISIONS = ("fp32", "fp16", "int8")
INPUT_NAME = "image"
ENGINE_NAME = "model.engine"
DEFAULT_WORKSPACE_MB = 2048
PARITY_IMAGES_FILE = "parity_images.safetensors"  # model-size RGB frames build-engine re-checks the engine on
PARITY_IMAGES = 4
INSTALL = "run pip install 'edgeiad[tensorrt]' on the device that will run the engine (engines are device-specific)"
MISSING = f"TensorRT is not installed: {INSTALL}"


def tensorrt_available() -> bool:
    """True when the tensorrt module imports (its CUDA libraries load) here."""
    try:
        import tensorrt  # noqa: F401
    except (ImportError, OSError):  # OSError: wheel present but libnvinfer/CUDA libraries missing
        return False
    return True


def _require_trt():
    try:
        import tensorrt as trt
    except (ImportError, OSError):
        raise MissingExtraError(MISSING) from None
    if int(str(trt.__version__).split(".")[0]) < 10:
        raise MissingExtraError(f"TensorRT {trt.__version__} is too old, edgeiad needs TensorRT 10: {INSTALL}")
    return trt


def deferred_build_settings(
    precision: str,
    batch: dict,
    input_shape: tuple[int, int, int],
    sidecar_shapes: dict[str, tuple] | None,
    workspace_mb: int = DEFAULT_WORKSPACE_MB,
    strongly_typed: bool = False,
) -> dict:
    """The build_engine arguments `edgeiad build-engine` replays on the device (stored as engine.build)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    batch_profile(batch)  # validate now, not on the device
    return {
        "precision": precision,
        "batch": dict(batch),
        "input_shape": [int(v) for v in input_shape],
        "sidecar_shapes": {k: [int(v) for v in s] for k, s in (sidecar_shapes or {}).items()} or None,
        "workspace_mb": int(workspace_mb),
        "strongly_typed": bool(strongly_typed),
    }


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    precision: str,
    batch: dict,
    input_shape: tuple[int, int, int],
    timing_cache: Path | None = None,
    calibration: np.ndarray | None = None,
    workspace_mb: int = DEFAULT_WORKSPACE_MB,
    sidecar_shapes: dict[str, tuple] | None = None,
    strongly_typed: bool = False,
    keep_scoring_fp32: bool = True,
) -> dict:
    """Parse the ONNX, build and atomically write a serialized engine; return {trt_version, gpu, build}."""
    settings = deferred_build_settings(precision, batch, input_shape, sidecar_shapes, workspace_mb, strongly_typed)
    trt = _require_trt()
    started = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # The parser owns the weights the network points to: it must stay alive until the build is done.
    network, _parser = _parse(trt, builder, logger, Path(onnx_path), strongly_typed)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    profile = _add_profile(builder, config, network, batch, tuple(input_shape), sidecar_shapes or {})
    mode, pinned = _set_precision(trt, builder, config, network, precision, strongly_typed, keep_scoring_fp32)
    cache_state = _use_timing_cache(config, timing_cache)
    calibrator = None
    if mode == "int8 calibrated":
        calibrator = _attach_calibrator(trt, config, network, profile, calibration, batch, sidecar_shapes or {})
    try:
        serialized = builder.build_serialized_network(network, config)
    finally:
        if calibrator is not None:
            calibrator.release()
    if serialized is None:
        raise ArtifactError(f"TensorRT {trt.__version__} could not build {Path(onnx_path).name}: see its log above")
    _atomic_write(Path(engine_path), memoryview(serialized))
    if timing_cache is not None:
        _atomic_write(Path(timing_cache), memoryview(config.get_timing_cache().serialize()))
    elapsed = round(time.perf_counter() - started, 2)
    settings.update(mode=mode, scoring_fp32_layers=pinned, tf32=False, timing_cache=cache_state, build_seconds=elapsed)
    return {"trt_version": str(trt.__version__), "gpu": gpu_name(), "build": settings}


def _parse(trt, builder, logger, onnx_path: Path, strongly_typed: bool):
    """Network (and its parser) from the ONNX file; parse_from_file also finds external data next to it."""
    flags = 0
    if strongly_typed:
        flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        if flag is None:
            raise ConfigError(f"TensorRT {trt.__version__} has no strongly typed networks: build without it")
        flags |= 1 << int(flag)
    network = builder.create_network(flags)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not onnx_path.is_file():
        raise ArtifactError(f"{onnx_path} does not exist: re-export the artifact with `edgeiad export`")
    if not parser.parse_from_file(str(onnx_path)):
        problems = "; ".join(_parser_error(parser.get_error(i)) for i in range(min(parser.num_errors, 5)))
        raise ArtifactError(
            f"TensorRT {trt.__version__} cannot parse {onnx_path.name}: {problems or 'unknown error'} "
            "(check_onnx_for_tensorrt lists what to change)"
        )
    return network, parser


def _parser_error(error) -> str:
    name = error.node_name() if hasattr(error, "node_name") else ""
    op = error.node_operator() if hasattr(error, "node_operator") else ""
    return f"node {name or error.node()}" + (f" ({op})" if op else "") + f": {error.desc()}"


def _add_profile(builder, config, network, batch: dict, input_shape: tuple, sidecar: dict):
    """One optimization profile: image batch min/opt/max, statistics inputs at their fixed shapes."""
    low, opt, high = batch_profile(batch)
    profile = builder.create_optimization_profile()
    needed = False
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        dims, shapes = tuple(tensor.shape), None
        if tensor.name == INPUT_NAME:
            _check_image_dims(dims, batch, input_shape, (low, high))
            shapes = [(b, *input_shape) for b in (low, opt, high)]
        elif tensor.name in sidecar:
            shapes = [tuple(sidecar[tensor.name])] * 3
        elif -1 in dims:
            raise ConfigError(f"input {tensor.name!r} has dynamic dims {list(dims)}: pass its shape in sidecar_shapes")
        if -1 in dims:
            profile.set_shape(tensor.name, *shapes)
            needed = True
    if needed and config.add_optimization_profile(profile) < 0:
        raise ConfigError(f"TensorRT rejected the optimization profile (batch {low}/{opt}/{high}, {input_shape})")
    return profile if needed else None


def _check_image_dims(dims: tuple, batch: dict, input_shape: tuple, limits: tuple[int, int]) -> None:
    if len(dims) != 4 or any(d not in (-1, want) for d, want in zip(dims[1:], input_shape)):
        raise ConfigError(f"ONNX input 'image' has dims {list(dims)}, expected [B, {', '.join(map(str, input_shape))}]")
    if dims[0] != -1 and (batch["mode"] == "dynamic" or dims[0] != limits[1]):
        raise ConfigError(f"the ONNX image batch is fixed at {dims[0]} but the batch is declared as {batch}")


def _set_precision(trt, builder, config, network, precision, strongly_typed, keep_scoring_fp32) -> tuple[str, int]:
    """Builder flags for the requested precision; returns (mode description, scoring layers pinned to fp32)."""
    # TF32 is on by default on Ampere+; it would perturb fp32 parity and the distance GEMM.
    config.clear_flag(trt.BuilderFlag.TF32)
    if strongly_typed:
        return "strongly typed (precision from the ONNX types and Q/DQ nodes)", 0
    if precision == "fp32":
        return "fp32", 0
    qdq = (trt.LayerType.QUANTIZE, trt.LayerType.DEQUANTIZE)
    if precision == "fp16":
        if not getattr(builder, "platform_has_fast_fp16", True):
            return "fp32 (this GPU has no fast fp16)", 0
        config.set_flag(trt.BuilderFlag.FP16)
        mode = "fp16"
    elif any(network.get_layer(i).type in qdq for i in range(network.num_layers)):
        config.set_flag(trt.BuilderFlag.INT8)  # explicit quantization: scales come from the Q/DQ nodes
        return "int8 explicit (Q/DQ)", 0  # unquantized layers stay fp32 without the FP16 flag
    else:
        config.set_flag(trt.BuilderFlag.INT8)
        mode = "int8 calibrated"
    return mode, _pin_scoring_fp32(trt, config, network) if keep_scoring_fp32 else 0


def network_graph(trt, network) -> tuple[list[GraphNode], set[str]]:
    """The network as GraphNodes named by layer index (layer names need not be unique) plus stats inputs."""
    matmul = {trt.LayerType.MATRIX_MULTIPLY, getattr(trt.LayerType, "EINSUM", None)}
    nodes = []
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        # Unconnected optional inputs come back as None.
        inputs = tuple(t.name for t in (layer.get_input(i) for i in range(layer.num_inputs)) if t is not None)
        outputs = tuple(layer.get_output(i).name for i in range(layer.num_outputs))
        kind = "matmul" if layer.type in matmul else "conv" if layer.type == trt.LayerType.CONVOLUTION else "other"
        nodes.append(GraphNode(str(index), kind, inputs, outputs))
    return nodes, {network.get_input(i).name for i in range(network.num_inputs)} - {INPUT_NAME}


def _pin_scoring_fp32(trt, config, network) -> int:
    """Force fp32 on every float layer of the scoring part; return how many layers were pinned."""
    nodes, stats_inputs = network_graph(trt, network)
    seeds = default_seeds(nodes, stats_inputs)
    if not seeds:  # no distance part (not a PatchCore/PaDiM graph): nothing to protect
        return 0
    pinned = 0
    scoring = partition_scoring(nodes, seeds)
    for index in sorted(int(name) for name in scoring):
        layer = network.get_layer(index)
        # Shape and index layers compute in integers; a float precision on them is an error.
        if all(layer.get_output(i).dtype == trt.float32 for i in range(layer.num_outputs)):
            layer.precision = trt.float32
            for i in range(layer.num_outputs):
                layer.set_output_type(i, trt.float32)
            pinned += 1
    if pinned:
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    return pinned


def _use_timing_cache(config, path: Path | None) -> dict | None:
    """Load the timing cache if present; one from another GPU or TensorRT is replaced, not fatal."""
    if path is None:
        return None
    blob = Path(path).read_bytes() if Path(path).is_file() else b""
    # ignore_mismatch=False: timings measured on another GPU would pick slow tactics here.
    loaded = bool(blob) and bool(config.set_timing_cache(config.create_timing_cache(blob), ignore_mismatch=False))
    if not loaded:
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    return {"path": str(path), "loaded": loaded}


def _attach_calibrator(trt, config, network, profile, calibration, batch: dict, sidecar: dict):
    """Implicit INT8 entropy calibration fed from host batches via pycuda (only for ONNX without Q/DQ)."""
    if calibration is None or len(calibration) == 0:
        raise ConfigError("INT8 without Q/DQ nodes needs calibration images (N×3×H×W float32) or a Q/DQ ONNX")
    cuda = require("pycuda.driver", "tensorrt")
    size = batch_profile(batch)[1]  # TensorRT calibrates at the profile's opt shape
    if len(calibration) < size:
        raise ConfigError(f"INT8 calibration needs at least {size} images (the batch opt size)")
    calibration = np.ascontiguousarray(calibration, dtype=np.float32)
    extra = {}
    for tensor in (network.get_input(i) for i in range(network.num_inputs)):
        if tensor.name != INPUT_NAME:
            # Zeros suffice: the layers reading statistics are pinned to fp32, so their ranges are never used.
            shape = tuple(sidecar.get(tensor.name, tensor.shape))
            extra[tensor.name] = np.zeros(shape, dtype=trt.nptype(tensor.dtype))
    batches = [{INPUT_NAME: calibration[i * size : (i + 1) * size], **extra} for i in range(len(calibration) // size)]
    calibrator = _make_calibrator(trt, cuda, batches)
    config.int8_calibrator = calibrator
    if profile is not None:
        config.set_calibration_profile(profile)
    return calibrator


def _make_calibrator(trt, cuda, batches: list[dict[str, np.ndarray]]):
    """An IInt8EntropyCalibrator2 over `batches`; its CUDA primary context stays current until release()."""
    cuda.init()
    context = cuda.Device(0).retain_primary_context()

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.index, self.device = 0, {}
            context.push()  # TensorRT calls get_batch on this thread during the build: one push covers it
            try:
                self.device = {name: cuda.mem_alloc(max(v.nbytes, 1)) for name, v in batches[0].items()}
            except BaseException:
                self.release()
                raise

        def get_batch_size(self) -> int:
            return len(batches[0][INPUT_NAME])

        def get_batch(self, names):
            if self.index >= len(batches):
                return None
            current, self.index = batches[self.index], self.index + 1
            for name in names:
                cuda.memcpy_htod(self.device[name], np.ascontiguousarray(current[name]))
            return [int(self.device[name]) for name in names]

        def read_calibration_cache(self):
            return None  # always calibrate from the artifact's own images

        def write_calibration_cache(self, cache) -> None:
            return None

        def release(self) -> None:
            try:
                for buffer in self.device.values():
                    buffer.free()
            finally:
                cuda.Context.pop()
                context.detach()

    return EntropyCalibrator()


def gpu_name() -> str:
    """Name of CUDA device 0 via pycuda or cuda-python, else 'unknown' (recorded, never required)."""
    try:
        import pycuda.driver as cuda

        cuda.init()
        return str(cuda.Device(0).name())
    except Exception:  # noqa: BLE001 - any failure only means we cannot name the GPU
        pass
    try:
        from cuda import cudart  # cuda-python

        name = cudart.cudaGetDeviceProperties(0)[1].name
        return name.decode(errors="replace").rstrip("\x00") if isinstance(name, bytes) else str(name)
    except Exception:  # noqa: BLE001
        return "unknown"


def _atomic_write(path: Path, data: memoryview) -> None:
    """Write via a hidden temporary file in the same folder and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False)
    try:
        with handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


def build_engine_for_artifact(artifact: Path, timing_cache: Path | None = None, force: bool = False) -> Path:
    """Build model.engine for a deferred trt artifact (or rebuild with force) and rewrite its manifest."""
    from edgeiad_runtime.manifest import load_manifest

    artifact = Path(artifact)
    manifest = load_manifest(artifact, verify=True)
    if manifest["target"] != "trt":
        raise ConfigError(f"{artifact} is a {manifest['target']} artifact: only trt artifacts have engines")
    if not manifest["deferred"] and not force:
        return artifact / manifest["files"]["model"]  # already built; force rebuilds (e.g. for another GPU)
    if manifest["files"]["onnx"] is None:
        raise ArtifactError(f"{artifact} kept no ONNX to build from: re-export it with `edgeiad export --target trt`")
    _require_trt()  # before anything is written: without TensorRT the artifact stays untouched
    scratch = artifact / f".{ENGINE_NAME}.building"  # hidden: the manifest writer skips it
    try:
        settings = _settings_from_manifest(manifest)
        info = build_engine(artifact / manifest["files"]["onnx"], scratch, timing_cache=timing_cache, **settings)
        _install_engine(artifact, manifest, scratch, info)
    finally:
        scratch.unlink(missing_ok=True)
    _check_engine_parity(artifact, manifest, settings["precision"])
    return artifact / ENGINE_NAME


def save_parity_images(folder: Path, batch: np.ndarray, preprocessing) -> None:
    """Keep a few preprocessed inputs as model-size uint8 RGB frames, so the device can re-check its engine."""
    from edgeiad_runtime.safetensors_io import save_file

    mean, std = np.asarray(preprocessing.mean, np.float32), np.asarray(preprocessing.std, np.float32)
    frames = np.rint(batch[:PARITY_IMAGES].transpose(0, 2, 3, 1) * std + mean).clip(0, 255).astype(np.uint8)
    if preprocessing.channel_order == "BGR":  # preprocess() flips RGB frames to BGR itself
        frames = frames[..., ::-1]
    save_file({"images": np.ascontiguousarray(frames)}, Path(folder) / PARITY_IMAGES_FILE)


def engine_parity(artifact: Path, tolerance: float) -> dict:
    """The built engine against ONNX Runtime on the same ONNX: map/score error, decisions changed, passed."""
    from edgeiad_runtime import Detector
    from edgeiad_runtime.safetensors_io import load_file

    stored = Path(artifact) / PARITY_IMAGES_FILE
    if stored.is_file():
        images, source = list(load_file(stored)["images"]), "stored"
    else:  # exported before parity images were kept: deterministic noise still catches a broken engine
        rng = np.random.default_rng(0)
        images, source = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(PARITY_IMAGES)], "noise"
    with Detector.load(artifact, backend="tensorrt") as engine, Detector.load(artifact, backend="onnxruntime") as ref:
        got = [engine.predict(image, color_order="RGB") for image in images]
        want = [ref.predict(image, color_order="RGB") for image in images]
    scale = max(max(float(np.abs(w.raw_map).max()) for w in want), 1e-12)
    map_error = max(float(np.abs(g.raw_map - w.raw_map).max()) for g, w in zip(got, want)) / scale
    return {
        "images": len(images),
        "source": source,
        "max_rel_map_error": map_error,
        "max_abs_score_error": max(abs(g.raw_score - w.raw_score) for g, w in zip(got, want)),
        "decisions_changed": sum(g.is_anomalous != w.is_anomalous for g, w in zip(got, want)),
        "tolerance": tolerance,
        "passed": map_error <= tolerance,
    }


def _check_engine_parity(artifact: Path, before: dict, precision: str) -> None:
    """Record the engine's parity in the manifest; an engine that disagrees is removed, the artifact deferred."""
    from edgeiad_runtime.manifest import load_manifest, write_manifest

    from .targets import TARGETS

    report = engine_parity(artifact, TARGETS["trt"].map_tolerance[precision])
    if not report["passed"]:
        (artifact / ENGINE_NAME).unlink(missing_ok=True)
        restored = copy.deepcopy(before)
        restored["deferred"], restored["files"]["model"] = True, restored["files"]["onnx"]
        write_manifest(artifact, restored)
        raise ArtifactError(
            f"the {precision} engine differs from the ONNX by {report['max_rel_map_error']:.3g} of the map range "
            f"(limit {report['tolerance']:g}): it was removed and {artifact} is deferred again; rebuild it at a "
            "higher precision"
        )
    manifest = load_manifest(artifact)
    manifest["engine"]["parity"] = report
    write_manifest(artifact, manifest)


def _settings_from_manifest(manifest: dict) -> dict:
    """build_engine keyword arguments from engine.build, falling back to the manifest's own fields."""
    stored = (manifest.get("engine") or {}).get("build") or {}
    return {
        "precision": stored.get("precision", manifest["precision"]),
        "batch": dict(stored.get("batch") or manifest["batch"]),
        "input_shape": tuple(stored.get("input_shape") or manifest["inputs"]["image"]["shape"][1:]),
        "sidecar_shapes": {k: tuple(v) for k, v in (stored.get("sidecar_shapes") or {}).items()} or None,
        "workspace_mb": int(stored.get("workspace_mb", DEFAULT_WORKSPACE_MB)),
        "strongly_typed": bool(stored.get("strongly_typed", False)),
    }


def _install_engine(artifact: Path, manifest: dict, scratch: Path, info: dict) -> None:
    """Move the engine into place and rewrite the manifest; on any failure restore the previous state."""
    from edgeiad_runtime.manifest import write_manifest

    target, backup = artifact / ENGINE_NAME, artifact / f".{ENGINE_NAME}.previous"
    had_engine = target.exists()
    if had_engine:
        os.replace(target, backup)
    updated = copy.deepcopy(manifest)
    updated["files"]["model"] = ENGINE_NAME
    updated["deferred"] = False
    updated["engine"] = {"trt_version": info["trt_version"], "gpu": info["gpu"], "build": info["build"]}
    updated["versions"] = {**updated["versions"], "tensorrt": info["trt_version"]}
    try:
        os.replace(scratch, target)
        write_manifest(artifact, updated)
    except BaseException:
        target.unlink(missing_ok=True)
        if had_engine:
            os.replace(backup, target)
        raise
    backup.unlink(missing_ok=True)
