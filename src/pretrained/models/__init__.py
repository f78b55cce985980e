"""One file per architecture: its config, its modules and its model classes.

Module attribute names are the Hugging Face checkpoint keys and config fields
are the ``config.json`` keys, so a checkpoint loads by identity.  Files here
import from :mod:`pretrained.modeling` and :mod:`pretrained.configuration`,
never from each other.
"""
