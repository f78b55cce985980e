"""Kept for imports of ``pretrained.modeling.generation_outputs``: it now lives in
:mod:`pretrained.modeling.generation.outputs`."""

from .generation.outputs import (  # noqa: F401
    GenerateDecoderOnlyOutput, GenerateEncoderDecoderOutput, GenerateBeamDecoderOnlyOutput,
    GenerateBeamEncoderDecoderOutput,
)

__all__ = ["GenerateDecoderOnlyOutput", "GenerateEncoderDecoderOutput", "GenerateBeamDecoderOnlyOutput", "GenerateBeamEncoderDecoderOutput"]
