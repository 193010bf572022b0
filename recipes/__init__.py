"""The classic experiments as runnable recipes (installed as ``keras_bn.recipes``).

Each module has ``DESCRIPTION``, ``main(argv)`` and ``run(args)``. `RECIPES` lists the names
that ``keras-bn run NAME`` takes; a module is imported only when it is listed or run.
"""

import importlib

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
