"""Fuzz suite (issue 18): hypothesis-generated requests for every RPC of the five services, and
generated constitution files, pipeline specs and trainer specs.

Hypothesis keeps its caches (the unicode tables, the constants it finds in the source) in a temporary
folder, never in the checkout; the tests run with `database=None`, so no example database is written.
"""

from __future__ import annotations

import tempfile

from hypothesis.configuration import set_hypothesis_home_dir

set_hypothesis_home_dir(tempfile.mkdtemp(prefix="charter-hypothesis-"))
