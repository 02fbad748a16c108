"""Byte identity with the release that made `tests/fixtures/golden/expected.json` (0.1.0, before the
engine redesign), for every format and encoding, Pillow and DALI CPU decoding. The tar hashes are
0.1.0's; the Parquet hashes were renewed twice, each a deliberate change of the schema metadata only
(the pixels and the column values are the same): when the image column took the Hugging Face
`datasets` Image layout, and when the ``label`` column of a listing with class names (the fixture's
ImageFolder) was declared a `datasets` ``ClassLabel`` (issue 16).

The expected sha256s hold for the library versions recorded in the fixture (Pillow's codecs and
resamplers, pyarrow's writer, DALI's decoder decide the bytes): with other versions the comparison
is skipped, and the engine/worker-count comparisons in tests/engine/ still hold output identical.
Regenerate with ``python tests/fixtures/golden/make_golden.py`` only when the output is meant to change.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent / "fixtures" / "golden"
sys.path.insert(0, str(HERE))
golden = pytest.importorskip("make_golden")

EXPECTED = json.loads((HERE / "expected.json").read_text())


@pytest.mark.parametrize("case", sorted(EXPECTED["cases"]))
def test_output_bytes_match_the_release(case, tmp_path):
    if "dali" in golden.CASES[case].get("decoder", "") and importlib.util.find_spec("nvidia.dali") is None:
        pytest.skip("DALI not installed")
    have = golden.versions()
    libs = ("pillow", "pyarrow") + (("dali",) if "dali" in case else ())
    changed = {k: (EXPECTED["versions"][k], have[k]) for k in libs if EXPECTED["versions"][k] != have[k]}
    if changed:
        pytest.skip(f"library versions differ from the fixture's: {changed}")
    got = golden.run_case(case, golden.stage_inputs(), tmp_path / "out")
    assert got == EXPECTED["cases"][case]
