"""Admin rules: compiled once from YAML into a pure function of (person, line, time).

Three modules, each with one job:

- ``compiler``: the rule syntax, its validation (every problem with its key
  path, for file and line) and the default rules; ``compile_rules`` builds
  the rule set;
- ``ruleset``: ``RuleSet``, the hot path from a ``LineView`` to the desired
  ``Status`` of every enabled target;
- ``explain``: why each target gets what it gets, rule by rule.

Import from ``presence_sync.rules``; the submodules are its inside.
"""

from presence_sync.rules.compiler import DEFAULT_RULES, TargetFacts, compile_rules
from presence_sync.rules.explain import Explanation, Miss, explain
from presence_sync.rules.ruleset import TEMPLATE_FIELDS, RuleSet

__all__ = [
    "DEFAULT_RULES",
    "TEMPLATE_FIELDS",
    "Explanation",
    "Miss",
    "RuleSet",
    "TargetFacts",
    "compile_rules",
    "explain",
]
