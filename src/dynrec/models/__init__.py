"""Recommendation models. Importing the package wires the registry's name lookup into
`Recommender.load` (`dynrec.models.base` cannot import the registry: the registry imports every
model module, and each of those imports the base)."""

from dynrec.models.base import use_model_lookup
from dynrec.models.registry import get_model_class

use_model_lookup(get_model_class)
