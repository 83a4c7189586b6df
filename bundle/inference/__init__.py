"""Inference: one runner (`InferenceRunner`: load and check every input, orient, reconstruct,
write atomically) and one small reconstructor per modality, plus the MONAI inferers that MONAI
Label and the evaluation engines call.

- `runner`: `InferenceRunner`, `resolve_inputs`, `ras_spacing`;
- `batching`: slices per network call and the batched network loop;
- `mri`: `MRIReconstructor`, `SliceReconstructionInferer`;
- `multicoil`: `MultiCoilReconstructor` (raw multi-coil k-space, network or classical baselines);
- `ct`: `CTReconstructor`, `CTConsistencyInferer`;
- `ct_measured`: `MeasuredCTReconstructor` (measured fan- or parallel-beam sinograms);
- `pet`: `PETReconstructor` (activity maps, given sinograms, list-mode);
- `xray`: `RadiographReconstructor`;
- `served`: `ReconstructorInferer` (a reconstructor as a MONAI inferer, for MONAI Label).
"""

from bundle.inference.ct import CTConsistencyInferer, CTReconstructor
from bundle.inference.ct_measured import MeasuredCTReconstructor
from bundle.inference.mri import MRIReconstructor, SliceReconstructionInferer
from bundle.inference.multicoil import MultiCoilReconstructor
from bundle.inference.pet import PETReconstructor
from bundle.inference.runner import InferenceRunner, ras_spacing, resolve_inputs
from bundle.inference.served import ReconstructorInferer
from bundle.inference.xray import RadiographReconstructor

__all__ = (
    "CTConsistencyInferer", "CTReconstructor", "InferenceRunner", "MeasuredCTReconstructor", "MRIReconstructor", "MultiCoilReconstructor", "PETReconstructor",
    "RadiographReconstructor", "ReconstructorInferer",
    "SliceReconstructionInferer", "ras_spacing", "resolve_inputs",
)
