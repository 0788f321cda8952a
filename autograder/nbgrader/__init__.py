"""The nbgrader front end: the course's pieces that nbgrader loads through ``nbgrader_config.py``.

``autograde`` (grades through the sandboxed engine in place of nbgrader's Execute), ``validate`` (the
Validate button's summary), ``feedback`` (hidden tests hidden from feedback) and ``gradebook`` (a
gradebook created fully migrated). These modules import the engine (``autograder``) and nbgrader;
the engine never imports them.
"""
