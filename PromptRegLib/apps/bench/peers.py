"""The intensity-based peers the bench runs beside PromptReg: SimpleITK, elastix and ANTs, each
``(case, quick, progress) -> (fixed → moving transform, extra row fields)``, on grey (luminance) inputs."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .cases import Case, read_2d


def _grey(image: sitk.Image) -> sitk.Image:
    """float32 image; colour reduced to luminance (the usual input of intensity-based methods)."""
    if image.GetNumberOfComponentsPerPixel() == 1:
        return sitk.Cast(image, sitk.sitkFloat32)
    channels = [sitk.Cast(sitk.VectorIndexSelectionCast(image, c), sitk.sitkFloat32) for c in range(3)]
    return channels[0] * 0.299 + channels[1] * 0.587 + channels[2] * 0.114


def _read_for_peer(path: str) -> sitk.Image:
    return _grey(read_2d(path))


def _scalar_file(path: str, scratch: str) -> str:
    """``path`` if it holds one component per pixel, else its luminance written into ``scratch``."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.ReadImageInformation()
    if reader.GetNumberOfComponents() == 1:
        return path
    grey_path = str(Path(scratch) / f"{Path(path).name}.grey.nrrd")
    sitk.WriteImage(_read_for_peer(path), grey_path)
    return grey_path


def _simpleitk(case: Case, quick: bool, progress) -> tuple[sitk.Transform, dict]:
    """SimpleITK: centred affine then a B-spline, multi-resolution, normalised correlation (same-modality pairs;
    Mattes MI where fixed and moving differ in modality) — the usual recipe from its notebooks."""
    fixed, moving = _read_for_peer(case.path(case.fixed)), _read_for_peer(case.path(case.moving))
    dimension = fixed.GetDimension()
    initial = sitk.CenteredTransformInitializer(fixed, moving, sitk.AffineTransform(dimension),
                                                sitk.CenteredTransformInitializerFilter.GEOMETRY)

    multimodal = case.multimodal

    def set_metric(registration: sitk.ImageRegistrationMethod) -> None:
        registration.SetMetricAsMattesMutualInformation(32) if multimodal else registration.SetMetricAsCorrelation()

    def method(iterations: int) -> sitk.ImageRegistrationMethod:
        registration = sitk.ImageRegistrationMethod()
        set_metric(registration)
        registration.SetMetricSamplingStrategy(registration.RANDOM)
        registration.SetMetricSamplingPercentage(0.2, seed=1)
        registration.SetInterpolator(sitk.sitkLinear)
        registration.SetShrinkFactorsPerLevel([4, 2, 1])
        registration.SetSmoothingSigmasPerLevel([2, 1, 0])
        registration.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
        registration.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-3,
                                                              numberOfIterations=iterations, relaxationFactor=0.5)
        registration.SetOptimizerScalesFromPhysicalShift()
        return registration

    iterations = 50 if quick else 200
    progress("affine", 0.0)
    affine_registration = method(iterations)
    affine_registration.SetInitialTransform(initial, inPlace=False)
    affine = affine_registration.Execute(fixed, moving)
    progress("B-spline", 0.5)
    mesh = [8] * dimension
    bspline = sitk.BSplineTransformInitializer(fixed, mesh)
    deformable = sitk.ImageRegistrationMethod()
    set_metric(deformable)
    deformable.SetMetricSamplingStrategy(deformable.RANDOM)
    deformable.SetMetricSamplingPercentage(0.1, seed=1)
    deformable.SetInterpolator(sitk.sitkLinear)
    deformable.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=20 if quick else 100)
    deformable.SetShrinkFactorsPerLevel([2, 1])
    deformable.SetSmoothingSigmasPerLevel([1, 0])
    deformable.SetMovingInitialTransform(affine)
    deformable.SetInitialTransform(bspline, inPlace=True)
    deformable.Execute(fixed, moving)
    composite = sitk.CompositeTransform([affine, bspline])
    return composite, {}


def _elastix(case: Case, quick: bool, progress) -> tuple[sitk.Transform, dict]:
    """elastix (itk-elastix): affine + B-spline default parameter maps."""
    import itk

    working_dir = os.getcwd()
    with tempfile.TemporaryDirectory() as scratch:  # grey inputs; transformix drops deformationField.nii in the cwd
        fixed = itk.imread(_scalar_file(case.path(case.fixed), scratch), itk.F)
        moving = itk.imread(_scalar_file(case.path(case.moving), scratch), itk.F)
        parameters = itk.ParameterObject.New()
        for name in ("affine", "bspline"):
            parameter_map = parameters.GetDefaultParameterMap(name, 3 if quick else 4)
            parameter_map["MaximumNumberOfIterations"] = ["100" if quick else "500"]
            parameters.AddParameterMap(parameter_map)
        progress("affine + B-spline", 0.0)
        _, result_parameters = itk.elastix_registration_method(fixed, moving, parameter_object=parameters,
                                                               log_to_console=False)
        progress("deformation field", 0.9)
        os.chdir(scratch)
        try:
            deformation = itk.transformix_deformation_field(moving, result_parameters)
        finally:
            os.chdir(working_dir)
    displacement = sitk.GetImageFromArray(itk.array_from_image(deformation).astype(np.float64), isVector=True)
    reference = sitk.ReadImage(case.path(case.fixed))
    displacement.CopyInformation(reference if reference.GetDimension() == displacement.GetDimension()
                                 else reference[:, :, 0])
    return sitk.DisplacementFieldTransform(displacement), {}


def _ants(case: Case, quick: bool, progress) -> tuple[sitk.Transform, dict]:
    """ANTs SyN (antspyx), its default recipe."""
    import ants

    with tempfile.TemporaryDirectory() as scratch:
        fixed = ants.image_read(_scalar_file(case.path(case.fixed), scratch))
        moving = ants.image_read(_scalar_file(case.path(case.moving), scratch))
    progress("SyN", 0.0)
    result = ants.registration(fixed, moving, type_of_transform="SyNRA" if not quick else "SyN")
    composite = sitk.CompositeTransform(fixed.dimension)
    for path in result["fwdtransforms"][::-1]:
        composite.AddTransform(sitk.ReadTransform(path) if path.endswith(".mat") else
                               sitk.DisplacementFieldTransform(sitk.Cast(sitk.ReadImage(path), sitk.sitkVectorFloat64)))
    return composite, {}

