"""The course's lessons, one module each (named like ``solutions/``): ``lesson1_scores`` ... ``lesson10_...``.

A lesson module holds its notebook's name (``NOTEBOOK``), the builders of its items' cases, its
``ITEMS: list[Item]`` (in notebook order) and its known mistakes and error hints (registered in
``exercises.mistakes`` when the module is imported). ``exercises.catalogue`` lists the lessons and
gathers their items. A lesson imports ``exercises.cases`` and ``exercises.mistake_core``, never another
lesson nor the catalogue.
"""
