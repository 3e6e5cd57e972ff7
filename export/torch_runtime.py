"""PyTorch backend of the Runtime: the model itself, on CPU or CUDA.

Options: ``device`` ("cpu", "cuda", "cuda:1"), ``precision`` ("fp32" or "bf16": autocast for the encoder
and decoders; the quantizer disables autocast and always searches in fp32), ``compile`` (``torch.compile``
the encoder and decoders; the first call per batch size pays the compile), ``threads`` (CPU threads).

It is the reference the other backends are checked against (fp32, CPU). On CUDA it switches TF32 off
(process-wide) so that fp32 really is fp32.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from evotok.export.boundary import check_images, model_info, prepare_codes
from evotok.export.golden import GOLDEN_FILE
from evotok.export.runtime import F32, U8, Codes, Runtime

log = logging.getLogger(__name__)


class TorchRuntime(Runtime):
    def __init__(
        self,
        weights_dir: Path | str,
        device: str = "cpu",
        precision: str = "fp32",
        compile: bool = False,
        threads: int | None = None,
    ) -> None:
        import torch

        from evotok.model.checkpoint import load_model

        if precision not in ("fp32", "bf16"):
            raise ValueError(f"torch precision must be 'fp32' or 'bf16', got {precision!r}")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} requested but torch.cuda.is_available() is False")
        if threads:
            torch.set_num_threads(threads)
        if device.startswith("cuda"):
            # process-wide: cuDNN allows TF32 convolutions by default, which would change fp32 codes
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        self.weights_dir = Path(weights_dir)
        self.golden_path = self.weights_dir / GOLDEN_FILE
        self.model, loaded = load_model(self.weights_dir, device=device)
        self.device = torch.device(device)
        self.precision = precision
        m = self.model
        self._encode_latent: Callable[[Any], Any] = m.encode_latent
        self._decode_latent: Callable[[Any], Any] = m.decode_latent
        self._semantic_latent: Callable[[Any], Any] = m.semantic_latent
        if compile:
            self._encode_latent = torch.compile(m.encode_latent)
            self._decode_latent = torch.compile(m.decode_latent)
            self._semantic_latent = torch.compile(m.semantic_latent)
        label = ("torch", str(self.device)) + (("compile",) if compile else ())
        self.info = model_info(loaded.card, loaded.config, loaded.hash, backend="torch", precision=precision,
                               providers=label)

    @contextlib.contextmanager
    def _ctx(self) -> Iterator[None]:
        import torch

        with torch.inference_mode(), torch.autocast(
            device_type=self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"
        ):
            yield

    def encode(self, images: U8) -> npt.NDArray[np.uint16]:
        import torch

        from evotok.model.evotok import images_to_tensor

        x = images_to_tensor(torch.from_numpy(check_images(images, self.info))).to(self.device)
        with self._ctx():
            latent = self._encode_latent(x)
            codes = self.model.quantize(latent.float()).codes  # fp32 search (autocast off inside)
        out: npt.NDArray[np.uint16] = codes.cpu().numpy().astype(np.uint16)
        return out

    def _latent(self, codes: Codes, depth: int) -> Any:
        import torch

        arr = prepare_codes(codes, self.info, min(depth, np.asarray(codes).shape[-1]))  # the prefix, unpadded
        return self.model.codes_to_latent(torch.from_numpy(arr).to(self.device))

    def decode(self, codes: Codes) -> U8:
        from evotok.model.evotok import tensor_to_images

        with self._ctx():
            x = self._decode_latent(self._latent(codes, self.info.pixel_depth)).float()
        out: U8 = tensor_to_images(x).cpu().numpy()
        return out

    def embed_codes(self, codes: Codes) -> F32:
        with self._ctx():
            feats = self._semantic_latent(self._latent(codes, self.info.semantic_depth))
        out: F32 = feats.float().cpu().numpy()
        return out
