"""The reference an evaluation scores against: the label file as it is on disk, with the protocol's label values.

The network works on the label's grid after the protocol's spatial transforms (orientation, resampling to e.g. 2 mm);
its prediction is carried back to the file's grid by MONAI's ``Invertd``. Carrying the label there the same way
(nearest neighbour, 2 mm and back) would score the prediction against a blockier reference than the file, one made in
the network's own voxels (on the shared 1 mm brain label maps it raised the shipped model's mean Dice by 0.07-0.08
over the file's: docs/README.md, "Evaluation time"). :class:`ReferenceLabeld` reads the label file again instead and
applies the protocol's label transforms that are not spatial (what ``Invertd`` would undo is left out: reading,
channel first and the label-value mapping remain), so the Dice is that of ``scripts.evaluation.segmentations`` on
the saved predictions.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

from monai.config import NdarrayOrTensor
from monai.transforms import Compose, InvertibleTransform, MapTransform

from ..errors import InputError

__all__ = ["ReferenceLabeld", "value_transforms"]


def value_transforms(transforms: Sequence) -> list:
    """The transforms of ``transforms`` that ``Invertd`` does not undo (reading, channel first, value mappings): the
    invertible ones (orientation, spacing, crops) are left out."""
    return [t for t in transforms if not isinstance(t, InvertibleTransform)]


class ReferenceLabeld(MapTransform):
    """Replace ``keys`` (a label carried through the protocol's transforms) by its file read again with the label
    transforms that are not spatial: the reference on the file's own grid, with the protocol's label values.

    Args:
        keys: the label key(s); each must be a MetaTensor whose ``filename_or_obj`` names its file.
        transforms: the protocol's label transforms (e.g. ``@label_transforms``); only :func:`value_transforms` of
            them run, on ``{key: path}``.
        like: the key of the prediction the reference must match in spatial shape (``None``: no check).

    Shapes:
        the label becomes ``(1, *file spatial shape)``, the shape of ``like`` once ``Invertd`` has carried it back.

    Raises:
        InputError: where the label has no file name or the reference's shape is not the prediction's.
    """

    def __init__(self, keys, transforms: Sequence, like: str | None = "pred", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.read = Compose(value_transforms(transforms))
        self.like = like

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            path = getattr(d[key], "meta", {}).get("filename_or_obj")
            if not path:
                raise InputError(f"'{key}' has no file name in its meta data; expected a label read from a file")
            reference = self.read({key: path})[key]
            if self.like is not None and self.like in d:
                shape, expected = tuple(reference.shape[1:]), tuple(d[self.like].shape[1:])
                if shape != expected:
                    raise InputError(
                        f"label '{path}' is {shape} on its own grid but '{self.like}' came back as {expected}; "
                        "expected the protocol's spatial transforms to be invertible"
                    )
            d[key] = reference
        return d
