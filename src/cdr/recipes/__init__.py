"""Customization, the "C" in CDR: recipes of per-domain criteria and exemplars, and routers that pick the domain.

rows -> conversations -> recipe (router -> criteria + exemplars) -> per-model rendering -> log-probs
"""

from cdr.recipes.context import Customized, customize
from cdr.recipes.recipe import DEFAULT_RECIPE, Domain, Exemplar, Recipe, load_recipe, preset_names
from cdr.recipes.router import CallableRouter, ColumnRouter, LLMRouter, RulesRouter, build_router, route

__all__ = [
    "DEFAULT_RECIPE",
    "CallableRouter",
    "ColumnRouter",
    "Customized",
    "Domain",
    "Exemplar",
    "LLMRouter",
    "Recipe",
    "RulesRouter",
    "build_router",
    "customize",
    "load_recipe",
    "preset_names",
    "route",
]
