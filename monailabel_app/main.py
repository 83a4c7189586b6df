"""A MONAI Label app that serves the bundle's reconstructions as images, not label maps.

MONAI Label's sample app `monaibundle` serves any bundle, but declares every model without a
known name a "segmentation" and lists the output as a label: Slicer and OHIF then show the
reconstruction as a label map. This app serves the same bundle folders (`--conf models a,b`, each
in `<app>/model/<name>`, made by scripts/pack_bundle.py) with the MONAI Label type "others", no
labels and dimension 3, so clients load the result as a volume. Inference is MONAI Label's own
`BundleInferTask` on the bundle's configs/inference.yaml (preprocessing, inferer, postprocessing;
the postprocessing returns the input's voxel order, and MONAI Label writes it with the input's
affine). README.md, "MONAI Label and Slicer", says how to start it and connect.
"""

from __future__ import annotations

import logging

import monailabel
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.infer.bundle import BundleInferTask
from monailabel.utils.others.generic import get_bundle_models

logger = logging.getLogger(__name__)


class ReconstructionInferTask(BundleInferTask):
    """`BundleInferTask` declared as an image-to-image model: type "others", no labels, 3D."""

    def __init__(self, path: str, conf: dict) -> None:
        super().__init__(path, conf, type=InferType.OTHERS)
        self.labels = {}
        self.dimension = 3


class MyApp(MONAILabelApp):
    def __init__(self, app_dir, studies, conf):
        self.models = get_bundle_models(app_dir, conf)
        super().__init__(app_dir=app_dir, studies=studies, conf=conf,
                         name=f"Deep-learning reconstruction (MONAI Label {monailabel.__version__})",
                         description="MRI, CT and PET reconstruction bundles; the outputs are images, not labels",
                         version="1")

    def init_infers(self):
        infers = {}
        for name, path in self.models.items():
            task = ReconstructionInferTask(path, self.conf)
            if task.is_valid():
                logger.info("+++ Adding reconstruction model: %s => %s", name, path)
                infers[name] = task
        return infers

    def init_trainers(self):
        return {}  # training runs with `python -m monai.bundle run training` (configs/train*.yaml)

    def init_strategies(self):
        return {"first": First()}
