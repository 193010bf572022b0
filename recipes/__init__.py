"""The classic experiments as runnable recipes (installed as ``keras_bn.recipes``).

Each module has ``DESCRIPTION``, ``main(argv)`` and ``run(args)``. `RECIPES` lists the names
that ``keras-bn run NAME`` takes; a module is imported only when it is listed or run.
"""

import ast
import importlib
import importlib.util

__all__ = ["RECIPES", "describe", "get_recipe"]

RECIPES = (
    "bn_vs_no_bn",
    "init_study",
    "bn_paper_mnist",
    "activation_comparison",
    "bn_learning_rate",
    "batch_size_norms",
    "best_cnn",
    "sanity_checks",
    "lr_finder",
    "hparam_search",
    "degradation",
    "norm_free",
    "rnn_clipping",
    "rnn_layernorm",
    "doctor_demo",
)


def get_recipe(name: str):
    """The recipe module called `name`; ValueError listing the recipes for an unknown one."""
    from keras_bn._validation import check_choice

    check_choice("recipe", name, RECIPES)
    return importlib.import_module(f"keras_bn.recipes.{name}")


def describe(name: str) -> str:
    """The recipe's one-line ``DESCRIPTION``, read from its source without importing it
    (so ``keras-bn list`` does not load TensorFlow)."""
    from keras_bn._validation import check_choice

    check_choice("recipe", name, RECIPES)
    spec = importlib.util.find_spec(f"keras_bn.recipes.{name}")
    with open(spec.origin, encoding="utf-8") as f:
        tree = ast.parse(f.read(), spec.origin)
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "DESCRIPTION" for t in node.targets):
            return ast.literal_eval(node.value)
    raise ValueError(f"recipe {name!r} defines no DESCRIPTION string in {spec.origin}")
