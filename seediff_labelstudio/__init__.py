"""seediff_labelstudio: a Label Studio ML backend (the v2 protocol) serving SeeDiff mask proposals.

Thin by design: parse the labeling config (``labels``), fetch the task image safely (``fetch``), call the
engine (``model``), return Label Studio JSON (``seediff.lsformat``). The HTTP contract is in ``server``.
"""

__all__ = ["__version__"]
__version__ = "0.1.0"
