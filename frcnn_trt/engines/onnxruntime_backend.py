"""The ONNX Runtime backend: ``rpn.onnx`` and ``detector.onnx`` in two inference sessions.

Glossary: ``N`` images, ``R`` RoIs, ``K`` classes including background (see :mod:`frcnn_trt.engines.protocol`).

- The ``frcnn.RoIPool`` node of ``detector.onnx`` is rewritten to ONNX's ``MaxRoiPool`` (same Caffe maths,
  bit-identical to torchvision) by :func:`frcnn_trt.ops.roi_pool.to_onnxruntime` before the session is built.
- Execution provider: the CPU EP, or the CUDA EP when torch sees a GPU *and* the session really keeps it.
  ``onnxruntime-gpu`` lists ``CUDAExecutionProvider`` even on a machine without a GPU (or without the CUDA
  libraries), and ONNX Runtime then silently drops it: we look at ``session.get_providers()`` and refuse
  (``BackendError``) instead of pretending. On CUDA, inputs and outputs stay on the GPU through IO binding.
  (The CUDA EP has no ``MaxRoiPool`` kernel: ORT runs that one node on the CPU and copies around it.)
- Threads: ``intra_op_threads=None`` leaves ONNX Runtime's default (one per physical core).
- Start-up: on the CPU the optimised graphs are cached (:mod:`frcnn_trt.engines.ort_cache`, option ``cache``),
  so a later start loads them with graph optimisation off and without the rewrite, and without importing
  ``onnx`` (which, like the RoI-pool rewrite, is imported only on a cache miss).
"""

from __future__ import annotations

import importlib.metadata as md
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from frcnn_trt.distributed import resolve_device
from frcnn_trt.engines.export_format import ExportInfo
from frcnn_trt.engines.ort_cache import GraphCache, GraphKey, optimised_session
from frcnn_trt.engines.protocol import Backend, BackendSpec
from frcnn_trt.errors import BackendError, ExportError

if TYPE_CHECKING:
    from frcnn_trt.model.faster_rcnn import FasterRCNN

__all__ = ["OPTIONS", "SPEC", "OnnxRuntimeBackend", "availability", "session_options"]

log = logging.getLogger("frcnn_trt.engines.onnxruntime")

_OPT_LEVELS = ("disable", "basic", "extended", "all")
#: the options of :meth:`OnnxRuntimeBackend.from_export` (``Detector.from_export(backend_options=...)``)
OPTIONS = frozenset({"intra_op_threads", "graph_optimization", "io_binding", "cache"})
INSTALL = "pip install onnxruntime-gpu  (Linux x86-64; elsewhere: pip install onnxruntime)"


def availability(device: torch.device, info: ExportInfo | None = None) -> tuple[bool, str]:
    """``(can run here, why)``: onnxruntime installed and, on a CUDA device, its CUDA provider listed."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        return False, f"onnxruntime is not installed ({exc})"
    providers = ort.get_available_providers()
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in providers:
            return False, f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (install onnxruntime-gpu)"
        return True, f"onnxruntime {ort.__version__}, CUDAExecutionProvider (kept only if the session accepts it)"
    return True, f"onnxruntime {ort.__version__}, CPUExecutionProvider"


def session_options(intra_op_threads: int | None = None, opt_level: str = "all") -> Any:
    """ONNX Runtime session options as this backend opens its graphs (everything that inspects or times them
    uses these, so it sees the same kernels)."""
    import onnxruntime as ort

    if opt_level not in _OPT_LEVELS:
        raise BackendError(f"graph optimisation level must be one of {', '.join(_OPT_LEVELS)}, got {opt_level!r}")
    so = ort.SessionOptions()
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[opt_level]
    if intra_op_threads is not None:
        if intra_op_threads < 0:
            raise BackendError(f"intra_op_threads must be ≥ 0 (0 = ONNX Runtime's default), got {intra_op_threads}")
        so.intra_op_num_threads = int(intra_op_threads)
    so.log_severity_level = 3  # warnings about hardware-specific (NCHWc) optimisations are noise here
    # INT8 (QDQ, symmetric int8 activations) exports: without this x86 runs Q/DQ around float kernels
    so.add_session_config_entry("session.qdqisint8allowed", "1")
    return so


class OnnxRuntimeBackend(Backend):
    """Run ``rpn.onnx`` / ``detector.onnx`` with ONNX Runtime on ``device`` (``"auto"``, ``"cpu"``, ``"cuda"``)."""

    name = "onnxruntime"

    def __init__(
        self,
        rpn_model: str | Path | bytes,
        detector_model: str | Path | bytes,
        *,
        device: str | torch.device | None = None,
        intra_op_threads: int | None = None,
        graph_optimization: str = "all",
        precision: str = "fp32",
        io_binding: bool | None = None,
        cache: GraphCache | None = None,
        cache_keys: tuple[str, str] | None = None,
    ) -> None:
        """``cache`` / ``cache_keys``: where optimised graphs are cached and the SHA-256 of each model file as the
        export records it (both needed, model paths only, CPU only; :meth:`from_export` passes them)."""
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendError(f"the onnxruntime backend needs the onnxruntime package: {exc}") from None
        self.device = resolve_device(device)
        self.io_binding = self.device.type == "cuda" if io_binding is None else bool(io_binding)
        self.precision = precision
        self.intra_op_threads = intra_op_threads
        self.graph_optimization = graph_optimization
        self.concurrent_calls = self.device.type == "cpu"
        if self.device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendError(f"device {self.device} asked of onnxruntime {ort.__version__}, which has no "
                                   "CUDAExecutionProvider (install onnxruntime-gpu), or use device='cpu'")
            index = self.device.index if self.device.index is not None else torch.cuda.current_device()
            self.device = torch.device("cuda", index)
            providers: list[Any] = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
        elif self.device.type == "cpu":
            providers = ["CPUExecutionProvider"]
        else:
            raise BackendError(f"the onnxruntime backend runs on cpu or cuda, not {self.device}")
        so = session_options(intra_op_threads, graph_optimization)
        use_cache = cache is not None and cache_keys is not None and self.device.type == "cpu"
        self.cache = cache if use_cache else None
        #: per graph file: ``True`` when its session came from the cache (only graphs the cache saw)
        self.cache_hits: dict[str, bool] = {}
        keys = cache_keys if use_cache and cache_keys is not None else (None, None)
        self.rpn_session = self._session(rpn_model, so, providers, rewrite=False, sha256=keys[0])
        self.detector_session = self._session(detector_model, so, providers, rewrite=True, sha256=keys[1])
        self.provider = self.rpn_session.get_providers()[0]
        self._rpn_outputs = [o.name for o in self.rpn_session.get_outputs()]
        self._det_outputs = [o.name for o in self.detector_session.get_outputs()]
        self._rpn_input = self.rpn_session.get_inputs()[0].name
        self._det_inputs = [i.name for i in self.detector_session.get_inputs()]
        if len(self._rpn_outputs) != 3 or len(self._det_outputs) != 2 or len(self._det_inputs) != 2:
            raise BackendError(f"unexpected graph signature: rpn outputs {self._rpn_outputs}, detector inputs "
                               f"{self._det_inputs} / outputs {self._det_outputs}")

    def _session(self, model: str | Path | bytes, so: Any, providers: list[Any], rewrite: bool,
                 sha256: str | None = None) -> Any:
        import onnxruntime as ort

        where = "<bytes>" if isinstance(model, bytes) else str(model)
        key = None
        if self.cache is not None and sha256 is not None and not isinstance(model, bytes):
            key = GraphKey.for_file(Path(model), sha256, rewrite=rewrite, optimization=self.graph_optimization,
                                    ort_version=ort.__version__, provider=str(providers[0]))
            cached = self.cache.lookup(key)
            self.cache_hits[Path(model).name] = cached is not None
            if cached is not None:  # already optimised: load it as it is, with the same session options
                level = so.graph_optimization_level
                so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
                try:
                    return self._create(lambda: ort.InferenceSession(cached, so, providers=providers), where)
                finally:
                    so.graph_optimization_level = level
        payload = _payload(model, rewrite, where)
        if key is None or self.cache is None:
            return self._create(lambda: ort.InferenceSession(payload, so, providers=providers), where)
        session, optimised = self._create(lambda: optimised_session(ort, payload, so, providers), where)
        self.cache.store(key, optimised)
        return session

    def _create(self, build: Any, where: str) -> Any:
        """``build()`` (a session, or a session and bytes), its errors as BackendError; CUDA really kept."""
        try:
            made = build()
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
            raise BackendError(f"onnxruntime cannot load {where}: {exc}") from None
        session = made[0] if isinstance(made, tuple) else made
        if self.device.type == "cuda" and "CUDAExecutionProvider" not in session.get_providers():
            raise BackendError(f"onnxruntime dropped the CUDAExecutionProvider for {where} (CUDA/cuDNN "
                               f"libraries missing or mismatched?); session providers: {session.get_providers()}."
                               " Use device='cpu' or fix the CUDA install")
        return made

    @classmethod
    def from_export(cls, info: ExportInfo, device: str | torch.device | None = None, cache: bool = True,
                    **options: Any) -> OnnxRuntimeBackend:
        """The export's two graphs; ``cache``: keep the optimised graphs (CPU) in the export's ``ort_cache``
        folder, or the user cache when the export is read-only."""
        values = set(info.precision.values())
        precision = "int8" if "int8" in values else "fp16" if "fp16" in values else "fp32"
        graph_cache = GraphCache.for_export(info.directory) if cache else None
        keys = (info.file_sha256(info.rpn_path.name), info.file_sha256(info.detector_path.name)) if cache else None
        return cls(info.rpn_path, info.detector_path, device=device, precision=precision, cache=graph_cache,
                   cache_keys=keys, **options)

    # ------------------------------------------------------------------------------------------ running

    def _run(self, session: Any, names: list[str], inputs: dict[str, Tensor]) -> list[Tensor]:
        if not self.io_binding:
            feeds = {k: np.ascontiguousarray(v.detach().cpu().numpy()) for k, v in inputs.items()}
            return [torch.from_numpy(a) for a in session.run(names, feeds)]
        return self._run_bound(session, names, inputs)

    def _run_bound(self, session: Any, names: list[str], inputs: dict[str, Tensor]) -> list[Tensor]:
        """IO binding: ORT reads the torch tensors in place and allocates outputs on the device, which come
        back to torch through DLPack (no host round trip on CUDA)."""
        kind = self.device.type
        index = self.device.index or 0
        binding = session.io_binding()
        keep = []  # the bound tensors must outlive the run
        for k, v in inputs.items():
            t = v.detach().to(self.device).contiguous()
            keep.append(t)
            binding.bind_input(k, kind, index, _np_dtype(t.dtype), list(t.shape), t.data_ptr())
        for name in names:
            binding.bind_output(name, kind, index)
        if kind == "cuda":
            torch.cuda.current_stream(self.device).synchronize()  # inputs written on torch's stream
        session.run_with_iobinding(binding)
        if kind == "cuda":
            binding.synchronize_outputs()
        out = []
        for value in binding.get_outputs():
            if hasattr(value, "__dlpack__"):
                out.append(torch.from_dlpack(value))
            else:  # pragma: no cover - builds without DLPack: one copy through the host
                out.append(torch.from_numpy(value.numpy()).to(self.device))
        del keep
        return out

    def run_rpn(self, blob: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        f, p, d = self._run(self.rpn_session, self._rpn_outputs, {self._rpn_input: blob.to(torch.float32)})
        return f, p, d

    def run_detector(self, features: Tensor, rois: Tensor) -> tuple[Tensor, Tensor]:
        feats_name, rois_name = self._det_inputs
        c, b = self._run(self.detector_session, self._det_outputs,
                         {feats_name: features, rois_name: rois.to(torch.float32)})
        return c, b

    def describe(self) -> str:
        threads = self.intra_op_threads if self.intra_op_threads is not None else "default"
        return (f"onnxruntime ({self.provider}, {self.precision}, intra-op threads {threads}, "
                f"opt {self.graph_optimization})")


def _payload(model: str | Path | bytes, rewrite: bool, where: str) -> bytes:
    """The bytes a session is built from: the file as it is, or (``rewrite``) with the RoI-pool node rewritten."""
    try:
        if rewrite:
            # imported here: onnx (~1.5 s) and the ops package are needed only when no cached graph exists
            import onnx

            from frcnn_trt.ops.roi_pool import to_onnxruntime

            proto = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(str(model))
            return to_onnxruntime(proto).SerializeToString()
        return model if isinstance(model, bytes) else Path(model).read_bytes()
    except ExportError as exc:
        raise BackendError(f"{where}: {exc}") from None
    except (OSError, ValueError) as exc:  # onnx's DecodeError is a ValueError subclass
        raise BackendError(f"cannot read ONNX model {where}: {exc}") from None


def _np_dtype(dtype: torch.dtype) -> Any:
    return {torch.float32: np.float32, torch.float16: np.float16, torch.int64: np.int64}[dtype]


def version() -> str | None:
    """The installed onnxruntime's version (either distribution), ``None`` when absent."""
    for dist in ("onnxruntime-gpu", "onnxruntime"):
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            continue
    return None


def load(info: ExportInfo, device: torch.device, options: Mapping[str, Any], model: FasterRCNN | None = None
         ) -> OnnxRuntimeBackend:
    """The spec's loader: the export's two ONNX files in ONNX Runtime sessions (``model`` unused)."""
    return OnnxRuntimeBackend.from_export(info, device, **options)


SPEC = BackendSpec(
    name="onnxruntime",
    summary="ONNX Runtime sessions of the export (CPU, or CUDA with onnxruntime-gpu)",
    availability=availability,
    options=OPTIONS,
    loader=load,
    version=version,
    install=INSTALL,
)
