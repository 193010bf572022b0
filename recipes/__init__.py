"""The classic experiments as runnable recipes (installed as ``keras_bn.recipes``).

Each module has ``DESCRIPTION``, ``main(argv)`` and ``run(args)``; `RECIPES` maps the names
that ``keras-bn run NAME`` takes to their modules, imported only when run.
"""

RECIPES = {
    "bn_vs_no_bn": "keras_bn.recipes.bn_vs_no_bn",
}
