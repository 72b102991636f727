"""A deterministic synthetic pedestrian dataset in the CUHK-PEDES annotation format.

Real text-based person search datasets cannot be downloaded everywhere (and never in CI), so
tests, the CPU demo and the benchmarks use people drawn here. ``write_synthetic(out)`` writes

    out/reid_raw.json                 the CUHK-PEDES annotation list
    out/imgs/synth/<pid>_<k>.jpg      one crude pedestrian crop per entry (H x W = image_size)

Each identity has a fixed set of attributes (build, skin, hair, hat, upper garment with sleeves
and pattern, lower garment, shoes, bag, carried object); every image re-renders that person with
Pillow from simple shapes under a new pose, view (front / back / side), scale, position,
lighting and background, and carries two captions that each mention a random subset of the
attributes in varied words. Colours come from an 11-name palette shared by everybody and also
used in the backgrounds, so a colour histogram alone cannot tell a red top over blue jeans from a
blue top over a red skirt: binding colours to garments, shapes, bags and hair is what matters.

Everything is a pure function of ``seed``: the same seed gives byte-identical files.

    attributes       palette, attribute vocabularies and frequencies, ``sample_person``
    captions         the caption grammar and ``tokenize_caption``
    render/          drawing one image: background, the person part by part, lighting
    writer           ``write_synthetic``: splits, files, the annotation list
    colour_baseline  the colour-histogram retrieval baseline these images are built to defeat
"""
from trainer.data.synthetic.attributes import PALETTE, sample_person
from trainer.data.synthetic.captions import ATTRIBUTE_WORDS, tokenize_caption
from trainer.data.synthetic.writer import write_synthetic

__all__ = ["write_synthetic", "PALETTE", "ATTRIBUTE_WORDS", "tokenize_caption", "sample_person"]
