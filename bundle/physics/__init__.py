"""Acquisition physics in pure torch: operators (A, A_adjoint, normal, norm), the noise of counting
detectors, and generic solvers. No MONAI, no files: tensors in, tensors out.

- `operator`: the `LinearOperator` interface and power iteration.
- `mri`: centred FFTs, Cartesian masks, `CartesianSingleCoil`, hard k-space data consistency.
- `mri_sense`: multi-coil `CartesianSense` (A = M F S), sensitivities from the calibration lines,
  simulated birdcage sensitivities, root-sum-of-squares, CG-SENSE.
- `ct_geometry`, `ct`, `ct_matrix`: the parallel-beam geometry, `ParallelBeamProjector` (with FBP
  and its own caches) and its sparse system matrix; CT data consistency.
- `ct_fan`: the flat-detector fan-beam geometry, `FanBeamProjector` (exact adjoint, fan-beam FBP
  with cosine, Parker and distance weights), rebinning to parallel beam, view subsets.
- `tv`: TV-regularised least squares (PDHG) on any operator: CT's iterative baseline.
- `noise`: Poisson-Gaussian counts and the dose checks (CT and radiography).
- `solvers`, `wavelets`: conjugate gradients, FISTA, the Haar-wavelet L1 prox.
"""
