"""MathJax for the feedback pages from the Jupyter server that shows them, never from a CDN (issue 18).

nbgrader's feedback template (``formgrader/templates/feedback/index.html.j2``) calls nbconvert's
``mathjax()`` macro without an argument, so the feedback always loads MathJax from cdnjs, whatever
``HTMLExporter.mathjax_url`` says; on an offline course server the math stays raw ``$...$``.

``nbgrader_config.py`` sets ``HTMLExporter.extra_template_basedirs`` to :func:`template_dirs`: the
course's ``autograder/nbgrader/templates/`` before nbgrader's own. nbconvert then searches
``templates/feedback/`` (the course's: only ``mathjax.html.j2``) before nbgrader's ``feedback/`` and
nbconvert's ``base/``, so nbgrader's feedback template, unchanged, gets the macro whose default URL is
:data:`MATHJAX_URL`: MathJax 2.7 from the ``jupyter-server-mathjax`` package (a dependency of the dev
extra), which every Jupyter server it is installed in serves at ``<base>/static/jupyter_server_mathjax/``.
The Formgrader's own ``formgrade`` template is not affected (the course has no ``templates/formgrade/``).

The URL is relative, so it holds under any base URL (``/`` for ``bash run.sh lab``, ``/user/<name>/``
under JupyterHub): a feedback page is always three folders below the server's root, and the server
shows files under ``<base>/files/``, so four ``..`` lead from the page to ``<base>``:

* the instructor's ``feedback/<student>/<assignment>/<notebook>.html`` (the course root is the server's);
* a student's fetched ``<assignment>/feedback/<timestamp>/<notebook>.html`` (nbgrader's
  ``fetch_feedback`` writes there, in the folder the Assignment List works in).

A page opened straight from the disk (``file://``) finds no MathJax and shows the math as ``$...$``
text, as it would offline with the CDN.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["MATHJAX_URL", "TEMPLATES", "installed_mathjax", "template_dirs"]

MATHJAX_URL = "../../../../static/jupyter_server_mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full,Safe"
TEMPLATES = Path(__file__).resolve().parent / "templates"


def template_dirs() -> list[str]:
    """``HTMLExporter.extra_template_basedirs``: the course's templates, then nbgrader's (the ones nbgrader
    itself would use: ``feedback`` and ``formgrade``)."""
    import nbgrader

    nbgrader_templates = Path(nbgrader.__file__).resolve().parent / "server_extensions" / "formgrader" / "templates"
    return [str(TEMPLATES), str(nbgrader_templates)]


def installed_mathjax() -> Path | None:
    """The ``MathJax.js`` that Jupyter servers of this environment serve, or None (jupyter-server-mathjax
    not installed: the feedback's math then stays ``$...$``)."""
    try:
        import jupyter_server_mathjax
    except ImportError:
        return None
    path = Path(os.path.dirname(jupyter_server_mathjax.__file__)) / "static" / "MathJax.js"
    return path if path.is_file() else None
