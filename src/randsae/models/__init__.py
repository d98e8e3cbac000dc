"""Models: sources (where a base model comes from), variants (trained, step0, rerandomized,
rerandomized_no_embed, control), the saved model artifact, and arch (where the hookpoints are).

Import the submodules directly; this package imports nothing so that ``randsae.models.arch``
stays cheap to import.
"""
